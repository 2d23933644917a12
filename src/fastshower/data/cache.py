"""Preprocess sim-hit files once into sharded graph files, then stream batches from them.

The cache folder is named by a hash of (input files, geometry, transform config); it holds
``shard_<split>_<i>.pt`` (lists of raw graphs) and ``manifest.json`` (files, split ranges,
transform config, fitted scaler), written last: a folder without it is incomplete and is
rebuilt. Splits are fixed event ranges of every file (first 80 % train, 10 % validation,
10 % test by default). Chunks are transformed in a pool of ``spawn`` worker processes; results
come back in order, so the cache is the same for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import IterableDataset, get_worker_info
from torch_geometric.loader import DataLoader

from fastshower.data.splits import SPLITS, file_sizes, split_bounds
from fastshower.data.transform import Scaler, TransformConfig, to_graphs
from fastshower.errors import FastShowerError
from fastshower.geometry import load
from fastshower.simhits import read_showers, sample_files

_GEOMETRY = {}  # per worker process: geometry loaded once


def cache_key(files: list[Path], geometry_hash: str, cfg: TransformConfig,
              fractions: tuple[float, float, float]) -> str:
    h = hashlib.sha256(json.dumps({
        "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "geometry": geometry_hash, "transform": cfg.model_dump(), "splits": fractions,
    }, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _work(task: tuple) -> list:
    """Worker: read one chunk and transform it (geometry cached per process)."""
    geometry, cfg, file, start, stop = task
    if geometry not in _GEOMETRY:
        _GEOMETRY[geometry] = load(geometry)
    try:
        batch = read_showers(file, start, stop)
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds for a damaged file
        raise FastShowerError(f"{file}: cannot read showers {start}-{stop}: {err}") from None
    return to_graphs(batch, _GEOMETRY[geometry], TransformConfig(**cfg),
                     where=f"{file} (showers from {start})")


def preprocess(inputs: str | Path, geometry: str | Path, out: str | Path,
               cfg: TransformConfig | None = None, workers: int = 1, chunk: int = 500,
               shard_size: int = 2000, fractions=(0.8, 0.1, 0.1),
               show_progress: bool = True, scheduler: str | None = None) -> Path:
    """Build (or find) the cache of ``inputs``; returns its folder. ``scheduler``: transform
    the chunks on a Dask cluster ('local' or an address, see fastshower.cluster) instead of a
    local process pool; the cache is the same either way."""
    cfg = cfg or TransformConfig()
    geom = load(geometry)
    files = sample_files(inputs)
    sizes = file_sizes(files, geom)
    folder = Path(out) / cache_key(files, geom.hash, cfg, tuple(fractions))
    if (folder / "manifest.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    ranges, tasks = [], []
    for f, n in zip(files, sizes, strict=True):
        bounds = split_bounds(n, fractions)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
            ranges.append({"file": str(f), "split": split, "start": int(lo), "stop": int(hi)})
            tasks += [(split, (str(geometry), cfg.model_dump(), str(f), s, min(s + chunk, hi)))
                      for s in range(lo, hi, chunk)]
    buffers = {s: [] for s in SPLITS}
    counts = {s: 0 for s in SPLITS}
    shards = {s: 0 for s in SPLITS}
    stats = _Moments()

    def flush(split: str) -> None:
        if buffers[split]:
            torch.save(buffers[split], folder / f"shard_{split}_{shards[split]:05d}.pt")
            shards[split] += 1
            buffers[split] = []

    columns = [TextColumn("preprocessing"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.0f} showers/s"), TimeRemainingColumn()]
    from fastshower.cluster import DaskPool

    with Progress(*columns, disable=not show_progress) as bar, \
            (DaskPool(scheduler, workers) if scheduler else _pool(workers)) as pool:
        task = bar.add_task("pre", total=sum(sizes), rate=0.0)
        results = (pool.imap(_work, [t for _, t in tasks]) if pool is not None
                   else map(_work, [t for _, t in tasks]))
        for (split, _), graphs in zip(tasks, results, strict=True):
            if split == "train":
                stats.add(graphs)
            buffers[split] += graphs
            counts[split] += len(graphs)
            if len(buffers[split]) >= shard_size:
                flush(split)
            bar.update(task, advance=len(graphs),
                       rate=bar.tasks[0].completed / max(bar.tasks[0].elapsed or 1e-9, 1e-9))
    for split in SPLITS:
        flush(split)
    manifest = {"key": folder.name, "geometry_hash": geom.hash, "transform": cfg.model_dump(),
                "fractions": list(fractions), "ranges": ranges, "counts": counts,
                "shards": shards, "scaler": stats.scaler().to_dict()}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


class _pool:
    """A spawn pool when workers > 1 (closed and joined on exit, terminated on error)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            self.pool = mp.get_context("spawn").Pool(self.workers)
        return self.pool

    def __exit__(self, kind, value, tb):
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
        return False


class _Moments:
    """Streaming mean and variance of the training features, for the scaler."""

    def __init__(self):
        self.n = self.nc = 0
        self.s = self.s2 = self.c = self.c2 = 0.0

    def add(self, graphs: list) -> None:
        if not graphs:
            return
        x = torch.cat([g.x for g in graphs]).double()
        x[:, 0] = torch.log(x[:, 0])
        c = torch.cat([g.cond for g in graphs]).double()
        self.n += len(x)
        self.nc += len(c)
        self.s, self.s2 = self.s + x.sum(0), self.s2 + (x**2).sum(0)
        self.c, self.c2 = self.c + c.sum(0), self.c2 + (c**2).sum(0)

    def scaler(self) -> Scaler:
        mean, cmean = self.s / self.n, self.c / self.nc
        std = torch.sqrt(torch.clamp(self.s2 / self.n - mean**2, min=0))
        cstd = torch.sqrt(torch.clamp(self.c2 / self.nc - cmean**2, min=0))
        return Scaler(mean.numpy(), torch.where(std > 0, std, 1.0).numpy(), cmean.numpy(),
                      torch.where(cstd > 0, cstd, 1.0).numpy())


class ShardDataset(IterableDataset):
    """Scaled graphs of one split, shard by shard; shards are dealt to DataLoader workers in
    turn, and shuffled within a shard by (seed, epoch) when ``shuffle``."""

    def __init__(self, folder: str | Path, split: str = "train", shuffle: bool = False,
                 seed: int = 0, epoch: int = 0):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        self.scaler = Scaler.from_dict(manifest["scaler"])
        self.shards = sorted(self.folder.glob(f"shard_{split}_*.pt"))
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch

    def __iter__(self):
        info = get_worker_info()
        mine = self.shards[info.id::info.num_workers] if info else self.shards
        for shard in mine:
            graphs = torch.load(shard, weights_only=False)
            order = (np.random.default_rng([self.seed, self.epoch, int(shard.stem[-5:])])
                     .permutation(len(graphs)) if self.shuffle else range(len(graphs)))
            for i in order:
                yield self.scaler.transform(graphs[i])


def batches(folder: str | Path, split: str = "train", batch_size: int = 64, workers: int = 0,
            shuffle: bool = False, seed: int = 0, epoch: int = 0) -> DataLoader:
    """torch_geometric batches of a cached split (workers are spawned processes)."""
    ds = ShardDataset(folder, split, shuffle, seed, epoch)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers,
                      multiprocessing_context="spawn" if workers else None,
                      prefetch_factor=2 if workers else None)
