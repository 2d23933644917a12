"""Training and evaluation of the energy regression: `fastshower regress train|evaluate`.

Input is a graph cache of `fastshower preprocess` (its train/val/test splits and its scaler);
runs use the same run folders as the generators (config, environment, history, atomic
checkpoints, resume at the last finished epoch, early stopping on the validation loss).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from fastshower.data.cache import read_manifest, read_split
from fastshower.data.graphs import Scaler, to_batch, to_data_list
from fastshower.data.splits import SPLITS
from fastshower.data.transform import GraphChunk, TransformConfig, to_chunk
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry, load
from fastshower.models.files import load_model_file, read_history, save_atomic
from fastshower.models.regression import (
    EnergyGNN,
    HighLevelDNN,
    RegressionConfig,
    em_layers,
    high_level,
    linear_fit,
    relative_error,
)
from fastshower.progress import Tracker
from fastshower.simhits import ShowerBatch
from fastshower.training import distributed
from fastshower.training.distributed import Dist
from fastshower.training.runs import RunFolder
from fastshower.validation.metrics import response_resolution

console = Console()


def attach(chunk: GraphChunk, scaler: Scaler, em: np.ndarray) -> list[Data]:
    """Raw graphs -> scaled graphs carrying their high-level variables and true energy (GeV)."""
    raw = to_batch(chunk)
    hl = high_level(raw.x, raw.batch, len(chunk), em)
    e_true = torch.exp(torch.from_numpy(chunk.cond[:, 0])).float()
    return [Data(x=s.x, edge_index=s.edge_index, hl=hl[i:i + 1],
                 e_hit=raw.x[chunk.node_ptr[i]:chunk.node_ptr[i + 1], 0],
                 e_true=e_true[i:i + 1])
            for i, s in enumerate(to_data_list(chunk, scaler))]


def read_cache_split(cache: str | Path, split: str, geom: Geometry) -> tuple[list[Data], dict]:
    manifest = read_manifest(cache)
    geom.require_same(manifest["geometry_hash"], str(cache))
    chunk = read_split(cache, split)
    return attach(chunk, Scaler.from_dict(manifest["scaler"]), em_layers(geom)), manifest


def read_held_out(held_out: str | Path, cache: str | Path, geom: Geometry) -> list[Data]:
    """Every shower of ``held_out`` (a cache of another sample, all its splits), scaled as the
    training ``cache``'s graphs were; both caches must share geometry and transform."""
    manifest, theirs = read_manifest(cache), read_manifest(held_out)
    geom.require_same(theirs["geometry_hash"], str(held_out))
    if theirs["transform"] != manifest["transform"]:
        raise FastShowerError(f"{held_out} was preprocessed with {theirs['transform']}, the "
                              f"training cache {cache} with {manifest['transform']}: preprocess "
                              "the held-out sample with the same options")
    scaler, em = Scaler.from_dict(manifest["scaler"]), em_layers(geom)
    return [g for split in SPLITS if theirs["counts"][split]
            for g in attach(read_split(held_out, split), scaler, em)]


@torch.no_grad()
def predict(model: EnergyGNN, graphs: list[Data], batch_size: int = 256) -> np.ndarray:
    """Predicted energies (GeV)."""
    model.eval()
    out = [torch.exp(model(b.x, b.edge_index, b.batch, b.num_graphs, b.e_hit, b.hl))
           for b in DataLoader(graphs, batch_size=batch_size)]
    return torch.cat(out).numpy()


def _share(graphs: list[Data], cfg: RegressionConfig, epoch: int, ranks: Dist) -> list[Data]:
    """This rank's graphs of an epoch: a permutation seeded by (seed, epoch), the same on every
    rank, dealt in turn; every rank gets as many (DDP needs equal numbers of batches)."""
    order = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(
        cfg.seed * 100_003 + epoch))
    mine = order[ranks.rank::ranks.world][:len(graphs) // ranks.world]
    return [graphs[i] for i in mine.tolist()]


def train(cache: str | Path, geometry: str | Path, out: str | Path, cfg: RegressionConfig,
          show_progress: bool = True) -> dict:
    """Train the GNN; returns the best validation record. Under torchrun (training.distributed)
    it trains with DistributedDataParallel: each rank takes its share of every epoch (a batch
    of batch_size per rank), rank 0 validates, decides when to stop and writes the run folder.
    Batch-norm statistics are per rank (rank 0's are kept): a named approximation."""
    geom = load(geometry)
    tr, manifest = read_cache_split(cache, "train", geom)
    va, _ = read_cache_split(cache, "val", geom)
    ranks = distributed.start()
    config = {**cfg.model_dump(), "cache": str(cache), "geometry_hash": geom.hash,
              "task": "energy-regression"}
    run = RunFolder(out, config) if ranks.main else None
    ranks.barrier()
    if not ranks.main:
        run = RunFolder(out, config, write=False)
    hl = torch.cat([g.hl for g in tr])
    torch.manual_seed(cfg.seed)
    visible = torch.cat([g.e_hit.sum().reshape(1) for g in tr]) / 1e3
    log_scale = float(torch.log(torch.cat([g.e_true for g in tr]) / visible).mean())
    model = EnergyGNN(tr[0].x.shape[1], cfg, hl.mean(0), hl.std(0).clamp(min=1e-6), log_scale)
    net = DistributedDataParallel(model) if ranks.world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    epoch, best, bad = 0, math.inf, 0
    state = run.load("last")
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, best, bad = state["epoch"], state["best"], state["bad"]
        if ranks.main:
            run.truncate_history(epoch)
            console.print(f"resuming {run.path} after epoch {epoch}")
    e_val = np.concatenate([g.e_true.numpy() for g in va])
    try:
        what = f"training energy regression ({cfg.conv}{' + high-level' * cfg.high_level})"
        with Tracker(what, cfg.max_epochs, unit="epochs", completed=epoch,
                     enabled=show_progress and ranks.main, console=console,
                     val_rel_error="-") as bar:
            while ranks.agree(epoch < cfg.max_epochs and bad < cfg.patience):
                start = time.time()
                net.train()
                losses = []
                for b in DataLoader(_share(tr, cfg, epoch, ranks), batch_size=cfg.batch_size):
                    loss = relative_error(net(b.x, b.edge_index, b.batch, b.num_graphs,
                                              b.e_hit, b.hl), b.e_true)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                epoch += 1
                if not ranks.main:
                    continue
                val = float(np.abs(1 - predict(model, va) / e_val).mean())
                record = {"epoch": epoch, "step": epoch, "train_loss": float(np.mean(losses)),
                          "val_loss": val, "seconds": time.time() - start,
                          "world_size": ranks.world}
                if val < best - 1e-5:
                    best, bad = val, 0
                    save_atomic({"task": "energy-regression", "config": cfg.model_dump(),
                                 "node_features": tr[0].x.shape[1], "geometry_hash": geom.hash,
                                 "scaler": manifest["scaler"], "transform": manifest["transform"],
                                 "state_dict": model.state_dict(), "epoch": epoch},
                                run.model_file)
                else:
                    bad += 1
                record["best_val_loss"] = best
                run.log(record)
                run.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "epoch": epoch, "best": best, "bad": bad})
                bar.update(completed=epoch, val_rel_error=f"{val:.4f}")
    finally:
        del net  # DDP's destructor talks to the process group: it goes first
        distributed.stop()
    return {"epoch": epoch, "best_val_loss": best, "stopped_early": bad >= cfg.patience,
            "rank": ranks.rank}


def load_regressor(run: str | Path, geom: Geometry) -> tuple[EnergyGNN, dict]:
    saved = load_model_file(run)
    if saved.get("task") != "energy-regression":
        raise FastShowerError(f"{run} is not an energy-regression run")
    geom.require_same(saved["geometry_hash"], str(run))
    cfg = RegressionConfig(**saved["config"])
    model = EnergyGNN(saved["node_features"], cfg)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


class RegressionRun:
    """A trained regression bound to its geometry, as the validation report takes it:
    ``RegressionRun(run, geom)(batch)`` -> predicted energies in GeV."""

    def __init__(self, run: str | Path, geom: Geometry):
        self.source, self.geom = str(run), geom
        self.model, self.saved = load_regressor(run, geom)

    def __call__(self, batch: ShowerBatch) -> np.ndarray:
        chunk = to_chunk(batch, self.geom, TransformConfig(**self.saved["transform"]))
        return predict(self.model, attach(chunk, Scaler.from_dict(self.saved["scaler"]),
                                          em_layers(self.geom)))


def regress_showers(run: str | Path, batch: ShowerBatch, geom: Geometry) -> np.ndarray:
    """A trained regression applied to any sim-hit showers (Geant4's or a generator's):
    predicted energies in GeV, with the run's own hit selection and scaling."""
    return RegressionRun(run, geom)(batch)


def _fit_dnn(tr, va, seed: int, epochs: int = 1000) -> HighLevelDNN:
    """The high-level baseline: full-batch Adam on the training split, best validation kept."""
    hl, e = torch.cat([g.hl for g in tr]), torch.cat([g.e_true for g in tr])
    hl_v, e_v = torch.cat([g.hl for g in va]), torch.cat([g.e_true for g in va])
    torch.manual_seed(seed)
    dnn = HighLevelDNN(hl.mean(0), hl.std(0).clamp(min=1e-6), log_e_mean=float(e.log().mean()))
    opt = torch.optim.Adam(dnn.parameters(), lr=1e-3)
    best, best_state = math.inf, None
    for _ in range(epochs):
        loss = relative_error(dnn(hl), e)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = relative_error(dnn(hl_v), e_v).item()
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in dnn.state_dict().items()}
    dnn.load_state_dict(best_state)
    return dnn.eval()


def evaluate(runs: list[str], cache: str | Path, geometry: str | Path, out: str | Path,
             n_bins: int = 5, seed: int = 0, held_out: str | Path | None = None) -> dict:
    """Response and resolution vs energy on the test split (or on every shower of a
    ``held_out`` cache): each GNN run, the linear calibrated energy sum and the high-level DNN
    (both fitted on the training split of ``cache``); plots."""
    geom = load(geometry)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr, _ = read_cache_split(cache, "train", geom)
    va, _ = read_cache_split(cache, "val", geom)
    te = (read_held_out(held_out, cache, geom) if held_out is not None
          else read_cache_split(cache, "test", geom)[0])
    e_true = torch.cat([g.e_true for g in te]).numpy()
    edges = np.geomspace(e_true.min(), e_true.max() * 1.0001, n_bins + 1)
    hl_tr, e_tr = torch.cat([g.hl for g in tr]).numpy(), torch.cat([g.e_true for g in tr]).numpy()
    hl_te = torch.cat([g.hl for g in te])
    coef = linear_fit(hl_tr, e_tr)
    preds = {"linear energy sum": hl_te[:, :2].numpy() @ coef}
    dnn = _fit_dnn(tr, va, seed)
    with torch.no_grad():
        preds["DNN (high-level only)"] = torch.exp(dnn(hl_te)).numpy()
    histories = {}
    for run in runs:
        model, saved = load_regressor(run, geom)
        c = saved["config"]
        name = f"GNN {c['conv']}{' + high-level' if c['high_level'] else ''}"
        preds[name] = predict(model, te)
        histories[name] = read_history(run)
    results = {name: response_resolution(p, e_true, edges) for name, p in preds.items()}
    results_meta = {"cache": str(cache), "held_out": None if held_out is None else str(held_out),
                    "n_test": len(te), "linear_coefficients": coef.tolist(),
                    "runs": runs, "methods": results}
    (out / "regression.json").write_text(json.dumps(results_meta, indent=2))
    _plot(results, histories, out, "held-out sample" if held_out is not None else "test split")
    return results_meta


def _plot(results: dict, histories: dict, out: Path, shown: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in results.items():
        e = [np.sqrt(b["e_min_gev"] * b["e_max_gev"]) for b in r["bins"]]
        axes[0].plot(e, [b["resolution"] for b in r["bins"]], "o-", label=name)
        axes[1].plot(e, [b["response"] for b in r["bins"]], "o-", label=name)
    for name, h in histories.items():
        axes[2].plot([r["epoch"] for r in h], [r["train_loss"] for r in h], "--",
                     label=f"{name} train")
        axes[2].plot([r["epoch"] for r in h], [r["val_loss"] for r in h], label=f"{name} val")
    axes[0].set(xscale="log", xlabel="E true (GeV)", ylabel="σ(E/E_true) / <E/E_true>",
                title=f"resolution ({shown})")
    axes[1].set(xscale="log", xlabel="E true (GeV)", ylabel="<E/E_true>", title="response")
    axes[1].axhline(1.0, color="grey", lw=0.5)
    axes[2].set(xlabel="epoch", ylabel="mean |1 - E/E_true|", title="training curves",
                yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "regression.png", dpi=110)
    plt.close(fig)
