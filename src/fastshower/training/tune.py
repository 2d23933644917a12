"""Hyper-parameter search with Optuna: `fastshower tune --config configs/tune/flowgnn.yaml`.

The YAML holds ``base`` (a training config, or changes to the one in ``base_config``),
``space`` (config keys, dotted for nested ones, each {low, high[, log]} for a number or
{choices: [...]}) and ``objective`` (a validation record key to minimise, by default the
validation suite's mean separation power; ``best_<stage>`` for a stage's best selection loss).
Every trial is a normal training run in OUT/trial_NNNN; its validations are reported to Optuna,
whose median pruner (``prune``) stops trials that do worse than the median of earlier trials at
the same step. ``sampler: grid`` runs every combination of the choices once instead of the TPE
search (configs/tune/gan3d_seeds.yaml: training seeds).
The study lives in a database (SQLite in OUT by default, any SQLAlchemy URL with --storage), so
several processes or machines running the same command share it. OUT gets best.yaml (the best
trial's full training config), trials.csv and search.png.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fastshower.errors import FastShowerError
from fastshower.progress import Tracker
from fastshower.training.loop import TrainConfig, train


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # a training YAML (e.g. configs/train/gan3d.yaml) whose settings base's keys (dotted for
    # nested ones) change
    base_config: Path | None = None
    base: dict = {}
    space: dict[str, dict]
    objective: str = "sep_power_mean"
    seed: int = Field(0, ge=0)
    # tpe: Optuna's default search; grid: every combination of the choices once (e.g. training
    # seeds, to keep the best of several runs of one configuration)
    sampler: Literal["tpe", "grid"] = "tpe"
    # stop trials that do worse than the median of earlier ones at the same step
    prune: bool = True

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if self.sampler == "grid" and not all("choices" in v for v in self.space.values()):
            raise ValueError("sampler grid needs choices for every key of the space")
        if self.base_config is not None and not self.base_config.is_file():
            raise ValueError(f"base_config {self.base_config} does not exist")
        return self

    def sampler_for_optuna(self):
        import optuna

        if self.sampler == "grid":
            return optuna.samplers.GridSampler(
                {k: v["choices"] for k, v in self.space.items()}, seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed)


def _set(config: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = value


def suggest(trial, space: dict[str, dict]) -> dict:
    """Trial values for every key of the search space."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(spec.get("low"), int) and isinstance(spec.get("high"), int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                            log=spec.get("log", False))
        elif {"low", "high"} <= set(spec):
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              log=spec.get("log", False))
        else:
            raise FastShowerError(f"search space entry {key}: give low/high or choices")
    return values


def trial_config(tune: TuneConfig, values: dict) -> TrainConfig:
    config = yaml.safe_load(tune.base_config.read_text()) if tune.base_config else {}
    for key, value in {**yaml.safe_load(yaml.safe_dump(tune.base)), **values}.items():
        _set(config, key, value)
    return TrainConfig(**config)


def tune(tune_cfg: TuneConfig, data: str, geometry: str | Path, out: str | Path, trials: int,
         storage: str | None = None, study_name: str = "fastshower") -> dict:
    """Run ``trials`` more trials of the study; returns the best trial's values."""
    import optuna

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for key in tune_cfg.space:  # a typo in the space fails now, not after the first trial
        trial_config(tune_cfg, {key: _example(tune_cfg.space[key])})
    study = optuna.create_study(
        study_name=study_name, storage=storage or f"sqlite:///{(out / 'study.db').resolve()}",
        direction="minimize", load_if_exists=True,
        sampler=tune_cfg.sampler_for_optuna(),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
                if tune_cfg.prune else optuna.pruners.NopPruner()))

    def objective(trial) -> float:
        cfg = trial_config(tune_cfg, suggest(trial, tune_cfg.space))

        def report(record: dict) -> None:
            trial.report(record[tune_cfg.objective], record["step"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        record = train(data, geometry, out / f"trial_{trial.number:04d}", cfg,
                       show_progress=False, on_validation=report)
        return record[tune_cfg.objective]

    def progress(study_, trial) -> None:
        best = (f"{study_.best_value:.4f}" if any(
            t.state == optuna.trial.TrialState.COMPLETE for t in study_.trials) else "-")
        bar.update(advance=1, best=best, pruned=sum(
            t.state == optuna.trial.TrialState.PRUNED for t in study_.trials))

    with Tracker("tuning", trials, unit="trials", best="-", pruned=0) as bar:
        study.optimize(objective, n_trials=trials, callbacks=[progress])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise FastShowerError("no trial completed; see the trial folders in " + str(out))
    best = study.best_trial
    config = trial_config(tune_cfg, best.params).model_dump()
    (out / "best.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_trials(study, tune_cfg, out / "trials.csv")
    plot_search(study, tune_cfg.objective, out / "search.png")
    return {"number": best.number, "run": out / f"trial_{best.number:04d}",
            "value": best.value, "params": best.params,
            "trials": len(study.trials), "pruned": sum(
                t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}


def write_trials(study, tune_cfg: TuneConfig, path: Path) -> Path:
    keys = list(tune_cfg.space)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", tune_cfg.objective, "last_step", "seconds", *keys])
        for t in study.trials:
            seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                       if t.datetime_complete and t.datetime_start else None)
            last = max(t.intermediate_values) if t.intermediate_values else None
            w.writerow([t.number, t.state.name, t.value, last, seconds,
                        *(t.params.get(k) for k in keys)])
    return path


def _example(spec: dict):
    return spec["choices"][0] if "choices" in spec else spec.get("low")


def plot_search(study, objective: str, path: Path) -> Path:
    """Objective of every trial (pruned ones at their last report) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    fig, ax = plt.subplots(figsize=(6, 4))
    best = np.inf
    xs, bests = [], []
    for t in study.trials:
        value = t.value if t.value is not None else (
            list(t.intermediate_values.values())[-1] if t.intermediate_values else None)
        if value is None:
            continue
        pruned = t.state == optuna.trial.TrialState.PRUNED
        ax.plot(t.number, value, "x" if pruned else "o", color="grey" if pruned else "C0")
        if not pruned:
            best = min(best, value)
        xs.append(t.number)
        bests.append(best)
    ax.step(xs, bests, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (validation)")
    ax.set_title("hyper-parameter search (x: pruned)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
