"""Training of the generators: `train` fits a model on the train split of a Geant4 sample and
writes a run folder (see runs.py); validation every N steps with the validation suite's
metrics, early stopping, best and last checkpoints, and an exact resume after a crash: the
mini-batches of step k depend only on (seed, k), so a resumed run replays the same steps.

Under torchrun (see distributed.py) FlowGNN trains with DistributedDataParallel: every rank
draws the same global mini-batch of step k and computes the loss of its own share of it,
scaled so that the gradients DDP averages are those of the global batch: N processes give
the result of one process on the same global batch (to float rounding; a test checks it).
Only rank 0 validates, logs and writes checkpoints; stopping decisions are broadcast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from fastshower.data.splits import read_split
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry, load
from fastshower.models.files import save_atomic
from fastshower.models.flowgnn import FlowGNN, FlowGNNConfig, TrainingData, fit_norms
from fastshower.models.parametric import ParametricShower
from fastshower.models.showers import PARTICLE_OF_PDG
from fastshower.progress import Tracker
from fastshower.simhits import ShowerBatch
from fastshower.training import distributed
from fastshower.training.distributed import SINGLE, Dist
from fastshower.training.runs import RunFolder
from fastshower.validation.metrics import compare, frechet_distance, standardise
from fastshower.validation.observables import high_level

MODELS = ("flowgnn", "parametric")
console = Console()


class TrainConfig(BaseModel):
    """Everything that defines a training run (saved as RUN/config.yaml)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = "flowgnn"
    seed: int = Field(0, ge=0)
    max_steps: int = Field(3000, gt=0)
    max_minutes: float = Field(110.0, gt=0)
    flow_batch: int = Field(256, gt=0)
    cell_pairs: int = Field(24, gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    val_every: int = Field(250, gt=0)
    patience: int = Field(6, gt=0)
    val_showers: int = Field(300, gt=9)
    # data-parallel runs: flow_batch and cell_pairs are the global batch, shared by the ranks,
    # unless batch_per_rank (then each rank takes them, and lr_scaling scales the learning
    # rate with the number of ranks)
    batch_per_rank: bool = False
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    flowgnn: FlowGNNConfig = FlowGNNConfig()


def fidelity(ref: ShowerBatch, gen: ShowerBatch, geom: Geometry) -> dict:
    """Quick validation-suite metrics of generated vs Geant4 showers: mean and maximum
    separation power of the high-level observables, and the Frechet distance (FPD)."""
    hl_r, hl_g = high_level(ref, geom), high_level(gen, geom)
    per = compare(hl_r, hl_g, joint=False)["observables"]
    sep = {k: v["separation_power"] for k, v in per.items()}
    names = list(hl_r)
    sr, sg = standardise(np.stack([hl_r[k] for k in names], 1),
                         np.stack([hl_g[k] for k in names], 1))
    worst = max(sep, key=sep.get)
    return {"sep_power_mean": float(np.mean(list(sep.values()))), "sep_power_max": sep[worst],
            "sep_power_worst": worst, "fpd": frechet_distance(sr, sg)}


def particles_of(batch: ShowerBatch) -> list[str]:
    return sorted(PARTICLE_OF_PDG[int(p)] for p in np.unique(batch.primaries.pdg))


def train(data: str, geometry: str | Path, out: str | Path, cfg: TrainConfig,
          show_progress: bool = True, on_validation=None) -> dict:
    """Train ``cfg.model`` on the train split of ``data``; returns the last validation record.
    Under torchrun, every rank calls this (see the module docstring). ``on_validation(record)``
    is called after every validation, once the checkpoint is written (hyper-parameter search
    uses it to prune)."""
    if cfg.model not in MODELS:
        raise FastShowerError(f"unknown model {cfg.model!r}; available: {', '.join(MODELS)}")
    geom = load(geometry)
    train_set, val_set = (read_split(data, geom, s) for s in ("train", "val"))
    if len(train_set) < 20 or len(val_set) < 5:
        raise FastShowerError(f"{data}: {len(train_set)} training and {len(val_set)} validation "
                              "showers are too few (need at least 20 and 5)")
    ranks = distributed.start()
    if cfg.model == "parametric" and ranks.world > 1:
        raise FastShowerError("the parametric model is a fit, not gradient descent: train it "
                              "in one process")
    config = {**cfg.model_dump(), "data": str(data), "geometry": str(geometry),
              "geometry_hash": geom.hash}
    run = RunFolder(out, config) if ranks.main else None
    ranks.barrier()
    if not ranks.main:  # reads checkpoints only; rank 0 owns the folder
        run = RunFolder(out, config, write=False)
    try:
        if cfg.model == "parametric":
            record = _train_parametric(run, train_set, val_set, geom, cfg)
            if on_validation is not None:
                on_validation(record)
            return record
        return _train_flowgnn(run, train_set, val_set, geom, cfg, show_progress, ranks,
                              on_validation)
    finally:
        distributed.stop()


def _train_parametric(run: RunFolder, train_set, val_set, geom, cfg: TrainConfig) -> dict:
    start = time.time()
    with console.status("fitting the parametrised model to the training split"):
        model = ParametricShower.fit(train_set, geom, seed=cfg.seed)
    gen = model.sample(val_set.primaries, geom, np.random.default_rng(cfg.seed))
    record = {"step": 1, "elapsed_s": time.time() - start, **fidelity(val_set, gen, geom)}
    run.log(record)
    save_atomic({"model": "parametric", "params": model.to_dict(), "geometry_hash": geom.hash},
                run.model_file)
    return record


def _schedule(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


class TrainingLoss(torch.nn.Module):
    """FlowGNN's training terms as sums over a (share of a) mini-batch: the forward pass that
    DistributedDataParallel wraps."""

    def __init__(self, model: FlowGNN):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, c: torch.Tensor, groups: list):
        flow = -self.model.flow.log_prob(x, c).sum()
        return (flow, *self.model.cell_sums(groups))


def _losses(net, data: TrainingData, cfg: TrainConfig, rng, ranks: Dist = SINGLE) -> dict:
    """Loss terms of the step whose draws come from ``rng``: the global mini-batch is drawn
    whole on every rank; each rank computes its share, normalised by the global counts and
    multiplied by the number of ranks (DDP averages gradients over ranks)."""
    model = net.module.model if hasattr(net, "module") else net.model
    scale = ranks.world if cfg.batch_per_rank else 1
    index = rng.choice(len(data), min(cfg.flow_batch * scale, len(data)), replace=False)
    x, c = data.flow_batch(model, index, rng)
    groups = data.cell_batch(model, cfg.cell_pairs * scale, rng, (ranks.rank, ranks.world))
    flow, bce, nll, n_cells, n_hits = net(x[ranks.rank::ranks.world], c[ranks.rank::ranks.world],
                                          groups)
    n_cells, n_hits = ranks.all_sum([n_cells, n_hits])
    flow = flow / (len(x) * x.shape[1]) * ranks.world
    bce, nll = bce / n_cells * ranks.world, nll / max(n_hits, 1) * ranks.world
    return {"loss": flow + bce + 0.1 * nll, "flow_nll": flow, "cell_bce": bce, "cell_nll": nll}


@torch.no_grad()
def _validate(model: FlowGNN, val: TrainingData, geom: Geometry, cfg: TrainConfig) -> dict:
    model.eval()
    rng = np.random.default_rng(12345)  # the same validation batches every time
    cfg = cfg.model_copy(update={"batch_per_rank": False})
    losses = [_losses(TrainingLoss(model), val, cfg, rng) for _ in range(4)]
    record = {f"val_{k}": float(np.mean([loss[k].item() for loss in losses])) for k in losses[0]}
    n = min(cfg.val_showers, len(val))
    gen = model.generate(val.primaries.subset(slice(0, n)), np.random.default_rng(0))
    record.update(fidelity(val.batch.subset(slice(0, n)), gen, geom))
    model.train()
    return record


def _learning_rate(cfg: TrainConfig, world: int) -> float:
    if not cfg.batch_per_rank or cfg.lr_scaling == "none":
        return cfg.lr
    return cfg.lr * (world if cfg.lr_scaling == "linear" else math.sqrt(world))


def _train_flowgnn(run: RunFolder, train_set, val_set, geom, cfg: TrainConfig,
                   show_progress: bool, ranks: Dist = SINGLE, on_validation=None) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter

    tr = TrainingData(train_set, geom)
    va = TrainingData(val_set, geom) if ranks.main else None
    state = run.load("last")
    norms = state["norms"] if state else fit_norms(tr, particles_of(train_set), cfg.seed)
    torch.manual_seed(cfg.seed)
    model = FlowGNN(geom, particles_of(train_set), cfg.flowgnn, norms)
    net = TrainingLoss(model)
    if ranks.world > 1:
        net = DistributedDataParallel(net)  # broadcasts rank 0's weights, averages gradients
    opt = torch.optim.AdamW(model.parameters(), lr=_learning_rate(cfg, ranks.world),
                            weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    # the two stages have disjoint parameters and losses: each keeps its own best state
    step, elapsed = 0, 0.0
    best = {"flow": math.inf, "cells": math.inf}
    bad = {"flow": 0, "cells": 0}
    best_state = {"flow": model.flow.state_dict(), "cells": model.cells.state_dict()}
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, bad, elapsed = state["step"], state["best"], state["bad"], state["elapsed"]
        best_state = state["best_state"]
        if ranks.main:
            run.truncate_history(step)
            console.print(f"resuming {run.path} at step {step}")
    writer = (SummaryWriter(run.path / "tensorboard", purge_step=step if state else None)
              if ranks.main else None)
    record, started = {}, time.time() - elapsed
    stop = min(bad.values()) >= cfg.patience
    model.train()
    with Tracker("training flowgnn", cfg.max_steps, unit="steps", completed=step,
                 enabled=show_progress and ranks.main, console=console, loss="-",
                 val="-") as bar:
        while step < cfg.max_steps and not stop:
            rng = np.random.default_rng([cfg.seed, step])
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            losses = _losses(net, tr, cfg, rng, ranks)
            opt.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
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
                      "lr": sched.get_last_lr()[0],
                      **{f"train_{k}": v.item() for k, v in losses.items()},
                      **_validate(model, va, geom, cfg)}
            for k, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(f"val/{k}", v, step)
            improved = []
            for stage, loss in (("flow", record["val_flow_nll"]),
                                ("cells", record["val_cell_bce"] + 0.1 * record["val_cell_nll"])):
                if loss < best[stage] - 1e-4:
                    best[stage], bad[stage] = loss, 0
                    best_state[stage] = {k: v.clone() for k, v in
                                         getattr(model, stage).state_dict().items()}
                    improved.append(stage)
                else:
                    bad[stage] += 1
            if improved:
                save_atomic(model.export(best_state), run.model_file)
            record.update({f"best_{k}": v for k, v in best.items()})
            run.log(record)
            stop = ranks.agree(min(bad.values()) >= cfg.patience or out_of_time)
            run.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "step": step, "best": best, "bad": bad,
                      "best_state": best_state, "elapsed": time.time() - started,
                      "norms": norms})
            bar.update(val=f"{record['val_loss']:.3f} sep {record['sep_power_mean']:.3f}")
            console.print(f"step {step}: val loss flow {record['val_flow_nll']:.4f}, cells "
                          f"{record['val_cell_bce']:.4f} + 0.1 x {record['val_cell_nll']:.4f} "
                          f"(improved: {', '.join(improved) or 'none'}); separation power mean "
                          f"{record['sep_power_mean']:.4f}, FPD {record['fpd']:.3f}, "
                          f"{record['elapsed_s'] / 60:.1f} min")
            if on_validation is not None:
                on_validation(record)
    if not ranks.main:
        return {}
    writer.close()
    if min(bad.values()) >= cfg.patience:
        console.print(f"early stop at step {step}: no better validation loss for "
                      f"{min(bad.values())} checks")
    return record or (run.history()[-1] if run.history() else {})
