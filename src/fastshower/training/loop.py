"""Training of the generators: `train` fits a registered generator on the train split of a
Geant4 sample and writes a run folder (see runs.py). Generators fitted in one pass are fitted;
generators trained by steps own their loss (``forward`` returns its terms) and this loop only
steps: validation every N steps with the validation suite's metrics, early stopping and
gradient clipping per parameter group ("stage"), best and last checkpoints, and an exact
resume after a crash: the mini-batches of step k depend only on (seed, k), so a resumed run
replays the same steps.

Under torchrun (see distributed.py) models train with DistributedDataParallel: every rank
draws the same global mini-batch of step k and computes the loss of its own share of it,
scaled so that the gradients DDP averages are those of the global batch: N processes give
the result of one process on the same global batch (to float rounding; a test checks it).
Only rank 0 validates, logs and writes checkpoints; stopping decisions are broadcast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from fastshower.data.splits import read_split
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry, load
from fastshower.models.base import ShowerGenerator, generator_class
from fastshower.progress import Tracker
from fastshower.simhits import ShowerBatch
from fastshower.training import distributed
from fastshower.training.distributed import SINGLE, Dist
from fastshower.training.runs import RunFolder, data_files
from fastshower.validation.metrics import classifier_test, compare, frechet_distance, standardise
from fastshower.validation.observables import high_level

console = Console()


class TrainConfig(BaseModel):
    """Everything that defines a training run (saved as RUN/config.yaml). The generator's own
    settings are a section named after it (e.g. ``flowgnn:``), checked by its config type."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = "flowgnn"
    seed: int = Field(0, ge=0)
    max_steps: int = Field(3000, gt=0)
    max_minutes: float = Field(110.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    val_every: int = Field(250, gt=0)
    patience: int = Field(6, gt=0)
    val_showers: int = Field(300, gt=9)
    # > 0: validation, selection and model.pt use an exponential moving average of the
    # weights (time constant 1 / (1 - ema_decay) steps), which smooths the step-to-step swings
    # of adversarial training (Yazici et al. 2019, "The unusual effectiveness of averaging in
    # GAN training"); training itself goes on with the raw weights
    ema_decay: float = Field(0.0, ge=0, lt=1)
    # validation also runs the classifier test (validation.metrics.classifier_test: 5 folds,
    # about a second for 1,000 showers of each) and records its AUC as ``auc``; generators
    # chosen by fidelity (gan3d) are then chosen by it
    val_classifier: bool = False
    # data-parallel runs: the model's mini-batch is the global batch, shared by the ranks,
    # unless batch_per_rank (then each rank takes it, and lr_scaling scales the learning rate
    # with the number of ranks)
    batch_per_rank: bool = False
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"

    @model_validator(mode="after")
    def _generator_section(self) -> TrainConfig:
        try:
            cls = generator_class(self.model)
        except FastShowerError as err:
            raise ValueError(str(err)) from None
        extra = dict(self.model_extra or {})
        unknown = sorted(set(extra) - {self.model})
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        if cls.config_type is None and extra:
            raise ValueError(f"{self.model} has no settings of its own")
        if cls.config_type is not None:
            section = cls.config_type.model_validate(extra.get(self.model) or {})
            self.__pydantic_extra__[self.model] = section.model_dump()
        return self

    def generator_config(self) -> BaseModel | None:
        """The generator's own settings, as its config type."""
        cls = generator_class(self.model)
        return None if cls.config_type is None else cls.config_type.model_validate(
            (self.model_extra or {})[self.model])


def fidelity(ref: ShowerBatch, gen: ShowerBatch, geom: Geometry,
             classifier: bool = False) -> dict:
    """Quick validation-suite metrics of generated vs Geant4 showers: mean and maximum
    separation power of the high-level observables, the Frechet distance (FPD) and, with
    ``classifier``, the classifier test's AUC and its standard error."""
    hl_r, hl_g = high_level(ref, geom), high_level(gen, geom)
    per = compare(hl_r, hl_g, joint=False)["observables"]
    sep = {k: v["separation_power"] for k, v in per.items()}
    xr, xg = (np.stack([hl[k] for k in hl_r], 1) for hl in (hl_r, hl_g))
    worst = max(sep, key=sep.get)
    out = {"sep_power_mean": float(np.mean(list(sep.values()))), "sep_power_max": sep[worst],
           "sep_power_worst": worst, "fpd": frechet_distance(*standardise(xr, xg))}
    if classifier:
        test = classifier_test(xr, xg)
        out.update(auc=test["auc"], auc_std=test["auc_std"])
    return out


def train(data: str, geometry: str | Path, out: str | Path, cfg: TrainConfig,
          show_progress: bool = True, on_validation=None) -> dict:
    """Train ``cfg.model`` on the train split of ``data``; returns the last validation record.
    Under torchrun, every rank calls this (see the module docstring). ``on_validation(record)``
    is called after every validation, once the checkpoint is written (hyper-parameter search
    uses it to prune)."""
    cls = generator_class(cfg.model)
    if cls.training == "none":
        raise FastShowerError(f"{cfg.model} cannot be trained")
    geom = load(geometry)
    files = data_files(data, out)
    train_set, val_set = (read_split(",".join(files), geom, s) for s in ("train", "val"))
    if len(train_set) < 20 or len(val_set) < 5:
        raise FastShowerError(f"{data}: {len(train_set)} training and {len(val_set)} validation "
                              "showers are too few (need at least 20 and 5)")
    ranks = distributed.start()
    if cls.training == "fit" and ranks.world > 1:
        raise FastShowerError(f"{cfg.model} is a fit, not gradient descent: train it in one "
                              "process")
    config = {**cfg.model_dump(), "data": str(data), "data_files": files,
              "geometry": str(geometry), "geometry_hash": geom.hash}
    run = RunFolder(out, config) if ranks.main else None
    ranks.barrier()
    if not ranks.main:  # reads checkpoints only; rank 0 owns the folder
        run = RunFolder(out, config, write=False)
    try:
        if cls.training == "fit":
            record = _fit(cls, run, train_set, val_set, geom, cfg)
            if on_validation is not None:
                on_validation(record)
            return record
        return _train_steps(cls, run, train_set, val_set, geom, cfg, show_progress, ranks,
                            on_validation)
    finally:
        distributed.stop()


def _fit(cls: type[ShowerGenerator], run: RunFolder, train_set, val_set, geom,
         cfg: TrainConfig) -> dict:
    start = time.time()
    with console.status(f"fitting {cls.name} to the training split"):
        model = cls.fit(train_set, geom, cfg.generator_config(), cfg.seed)
    model.trained_on = _trained_on(run, train_set, val_set)
    gen = model.sample(val_set.primaries, np.random.default_rng(cfg.seed))
    record = {"step": 1, "elapsed_s": time.time() - start, **fidelity(val_set, gen, geom)}
    run.log(record)
    model.save(run.model_file)
    return record


def _trained_on(run: RunFolder, train_set, val_set) -> dict:
    """What a model file records of its training sample (the card's training-set size)."""
    return {"showers": len(train_set), "validation": len(val_set),
            "data": str(run.config.get("data", ""))}


def _schedule(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _losses(net, data: Any, cfg: TrainConfig, rng, ranks: Dist = SINGLE) -> dict:
    """Loss terms of the step whose draws come from ``rng``: the model gives each term as a sum
    over this rank's share of the global mini-batch and a count; the counts are summed over the
    ranks and each term is multiplied by the number of ranks (DDP averages gradients)."""
    model = net.module if hasattr(net, "module") else net
    scale = ranks.world if cfg.batch_per_rank else 1
    terms = net(data, rng, scale, (ranks.rank, ranks.world))
    counts = ranks.all_sum([count for _, count in terms.values()])
    out = {k: s / max(c, 1) * ranks.world for (k, (s, _)), c in
           zip(terms.items(), counts, strict=True)}
    return {"loss": sum(model.loss_weights[k] * v for k, v in out.items()), **out}


@torch.no_grad()
def _validate(model, val, val_set: ShowerBatch, geom: Geometry, cfg: TrainConfig) -> dict:
    model.eval()
    rng = np.random.default_rng(12345)  # the same validation batches every time
    cfg = cfg.model_copy(update={"batch_per_rank": False})
    losses = [_losses(model, val, cfg, rng) for _ in range(4)]
    record = {f"val_{k}": float(np.mean([loss[k].item() for loss in losses])) for k in losses[0]}
    n = min(cfg.val_showers, len(val_set))
    gen = model.sample(val_set.primaries.subset(slice(0, n)), np.random.default_rng(0))
    record.update(fidelity(val_set.subset(slice(0, n)), gen, geom, cfg.val_classifier))
    model.train()
    return record


def _averaged(cls, model, geom: Geometry, cfg: TrainConfig, state: dict | None):
    """A second copy of the model that will hold the moving average of its weights (and
    buffers), restored from the checkpoint when resuming; None without ``ema_decay``. Built
    from the model's state, not deep-copied (some models hold sparse tensors)."""
    if not cfg.ema_decay:
        return None
    saved = state.get("averaged") if state else None
    averaged = cls.from_state(saved or model.state(), geom)
    averaged.trained_on = model.trained_on
    return averaged


@torch.no_grad()
def _update_average(averaged, model, decay: float) -> None:
    """averaged <- decay averaged + (1 - decay) model, weights and floating-point buffers;
    other buffers (counters) copied."""
    current = model.state_dict()
    for k, a in averaged.state_dict().items():
        m = current[k]
        if a.is_floating_point():
            a.lerp_(m, 1 - decay)
        else:
            a.copy_(m)


def _learning_rate(cfg: TrainConfig, world: int) -> float:
    if not cfg.batch_per_rank or cfg.lr_scaling == "none":
        return cfg.lr
    return cfg.lr * (world if cfg.lr_scaling == "linear" else math.sqrt(world))


def _train_steps(cls, run: RunFolder, train_set, val_set, geom, cfg: TrainConfig,
                 show_progress: bool, ranks: Dist = SINGLE, on_validation=None) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter

    tr = cls.training_data(train_set, geom)
    va = cls.training_data(val_set, geom) if ranks.main else None
    state = run.load("last")
    torch.manual_seed(cfg.seed)
    model = (cls.from_state(state["model"], geom) if state else
             cls.build(tr, geom, cfg.generator_config(), cfg.seed))
    model.trained_on = _trained_on(run, train_set, val_set)
    averaged = _averaged(cls, model, geom, cfg, state)
    judged = model if averaged is None else averaged  # what validation sees
    net = model
    if ranks.world > 1:
        net = DistributedDataParallel(model)  # broadcasts rank 0's weights, averages gradients
    opt = torch.optim.AdamW(model.parameters(), lr=_learning_rate(cfg, ranks.world),
                            weight_decay=1e-5, betas=model.adam_betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    # stages have disjoint parameters and losses: each keeps its own best state
    step, elapsed, skipped = 0, 0.0, 0
    best = {stage: math.inf for stage in model.stages}
    bad = {stage: 0 for stage in model.stages}
    best_state = {stage: getattr(judged, stage).state_dict() for stage in model.stages}
    if state:  # the weights came back with the model (from_state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, bad, elapsed = state["step"], state["best"], state["bad"], state["elapsed"]
        best_state, skipped = state["best_state"], state.get("skipped", 0)
        if ranks.main:
            run.truncate_history(step)
            console.print(f"resuming {run.path} at step {step}")
    writer = (SummaryWriter(run.path / "tensorboard", purge_step=step if state else None)
              if ranks.main else None)
    record, started = {}, time.time() - elapsed
    stop = min(bad.values()) >= cfg.patience
    model.train()
    with Tracker(f"training {cls.name}", cfg.max_steps, unit="steps", completed=step,
                 enabled=show_progress and ranks.main, console=console, loss="-",
                 val="-") as bar:
        while step < cfg.max_steps and not stop:
            rng = np.random.default_rng([cfg.seed, step])
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            losses = _losses(net, tr, cfg, rng, ranks)
            opt.zero_grad()
            losses["loss"].backward()
            norms = [torch.nn.utils.clip_grad_norm_(getattr(model, stage).parameters(), 5.0)
                     for stage in model.stages]  # each stage its own: none throttles another
            if all(torch.isfinite(n) for n in norms):  # the same on every rank (all-reduced)
                opt.step()
                if averaged is not None:
                    _update_average(averaged, model, cfg.ema_decay)
            else:  # a non-finite gradient would spoil the weights for good: skip the step
                skipped += 1
                if ranks.main and skipped == 1:
                    console.print(f"step {step}: non-finite gradient, step skipped (counted in "
                                  "the validation records)")
            sched.step()
            step += 1
            if step % 10 == 0 and ranks.main:
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v.item(), step)
            bar.update(completed=step, loss=f"{losses['loss'].item():.3f}")
            out_of_time = ranks.agree(time.time() - started > 60 * cfg.max_minutes)
            if step % cfg.val_every and step < cfg.max_steps and not out_of_time:
                continue
            if not ranks.main:  # rank 0 validates and decides whether to go on
                stop = ranks.agree(False)
                continue
            record = {"step": step, "elapsed_s": round(time.time() - started, 1),
                      "lr": sched.get_last_lr()[0], "skipped_steps": skipped,
                      **{f"train_{k}": v.item() for k, v in losses.items()},
                      **_validate(judged, va, val_set, geom, cfg)}
            for k, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(f"val/{k}", v, step)
            improved = []
            for stage, loss in ((s, model.selection_loss(s, record)) for s in model.stages):
                if loss < best[stage] - 1e-4:
                    best[stage], bad[stage] = loss, 0
                    best_state[stage] = {k: v.clone() for k, v in
                                         getattr(judged, stage).state_dict().items()}
                    improved.append(stage)
                else:
                    bad[stage] += 1
            if improved:
                model.save(run.model_file, model.state(best_state))
            record.update({f"best_{k}": v for k, v in best.items()})
            run.log(record)
            stop = ranks.agree(min(bad.values()) >= cfg.patience or out_of_time)
            run.save({"model": model.state(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "step": step, "best": best, "bad": bad,
                      "best_state": best_state, "elapsed": time.time() - started,
                      "skipped": skipped,
                      "averaged": None if averaged is None else averaged.state()})
            bar.update(val=f"{record['val_loss']:.3f} sep {record['sep_power_mean']:.3f}")
            terms = ", ".join(f"{k} {record[f'val_{k}']:.4f}" for k in model.loss_weights)
            console.print(f"step {step}: validation {terms} (improved: "
                          f"{', '.join(improved) or 'none'}); separation power mean "
                          f"{record['sep_power_mean']:.4f}, FPD {record['fpd']:.3f}, "
                          + (f"AUC {record['auc']:.3f}, " if "auc" in record else "")
                          + f"{record['elapsed_s'] / 60:.1f} min")
            if on_validation is not None:
                on_validation(record)
    if not ranks.main:
        return {}
    writer.close()
    if min(bad.values()) >= cfg.patience:
        console.print(f"early stop at step {step}: no better validation loss for "
                      f"{min(bad.values())} checks")
    return record or (run.history()[-1] if run.history() else {})
