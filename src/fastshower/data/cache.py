"""Preprocess sim-hit files once into sharded graph files, then stream batches from them.

The cache folder is named by a hash of (input files, geometry, transform config, format); it
holds ``shard_<split>_<i>.npz`` (GraphChunks of raw graphs) and ``manifest.json`` (files,
split ranges, transform config, fitted scaler, showers left out), written last: a folder
without it is incomplete and is rebuilt. Splits are fixed event ranges of every file (first
80 % train, 10 % validation, 10 % test by default). Chunks are transformed in a pool of
``spawn`` worker processes (numpy only: they start without torch); results come back in order,
so the cache is the same for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fastshower.cluster import DaskPool, in_order
from fastshower.data.graphs import Scaler, to_batch
from fastshower.data.splits import SPLITS, file_sizes, split_bounds
from fastshower.data.transform import (
    GraphChunk,
    Moments,
    TransformConfig,
    node_table,
    transform_file_range,
)
from fastshower.errors import FastShowerError
from fastshower.geometry import load
from fastshower.progress import Tracker
from fastshower.simhits import sample_files

FORMAT = 3  # of the shards: 3 = GraphChunk .npz without cell-constant features


def cache_key(files: list[Path], geometry_hash: str, cfg: TransformConfig,
              fractions: tuple[float, float, float]) -> str:
    h = hashlib.sha256(json.dumps({
        "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "geometry": geometry_hash, "transform": cfg.model_dump(), "splits": fractions,
        "format": FORMAT,
    }, sort_keys=True).encode())
    return h.hexdigest()[:16]


def preprocess(inputs: str | Path, geometry: str | Path, out: str | Path,
               cfg: TransformConfig | None = None, workers: int = 1, chunk: int = 500,
               fractions=(0.8, 0.1, 0.1), show_progress: bool = True,
               scheduler: str | None = None) -> Path:
    """Build (or find) the cache of ``inputs``; returns its folder. Each chunk of ``chunk``
    showers of a file is read once and becomes one shard per split it overlaps, written by the
    worker that made it (nothing large crosses processes). ``scheduler``: transform the chunks
    on a Dask cluster ('local' or an address, see fastshower.cluster) instead of a local process
    pool; the cache is the same."""
    cfg = cfg or TransformConfig()
    geom = load(geometry)
    files = sample_files(inputs)
    sizes = file_sizes(files, geom)
    folder = Path(out) / cache_key(files, geom.hash, cfg, tuple(fractions))
    if (folder / "manifest.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.save(folder / "nodes.npy", node_table(geom))  # cell features, to rebuild shards' nodes

    ranges, tasks = [], []
    for f, n in zip(files, sizes, strict=True):
        bounds = split_bounds(n, fractions)
        splits = {split: (int(lo), int(hi)) for split, lo, hi
                  in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)}
        ranges += [{"file": str(f), "split": k, "start": lo, "stop": hi}
                   for k, (lo, hi) in splits.items()]
        tasks += [(str(geometry), cfg.model_dump(), str(f), start, min(start + chunk, n),
                   splits, str(folder), len(tasks) + i)
                  for i, start in enumerate(range(0, n, chunk))]
    counts = {s: 0 for s in SPLITS}
    shards = {s: 0 for s in SPLITS}
    skipped = 0
    stats = Moments()
    with Tracker("preprocessing", sum(sizes), enabled=show_progress) as bar, \
            (DaskPool(scheduler, workers) if scheduler else _pool(workers)) as pool:
        results = (pool.imap(transform_file_range, tasks) if pool is not None
                   else map(transform_file_range, tasks))
        for task, (written, bad) in zip(tasks, results, strict=True):
            for split, (n, moments) in written.items():
                counts[split] += n
                shards[split] += 1
                if moments is not None:
                    stats.merge(moments)
            skipped += bad
            bar.update(advance=task[4] - task[3])
    if skipped:
        bar.console.print(f"[yellow]left out {skipped} bad shower(s) (NaN/negative energy or "
                          "cell id outside the geometry); counted in the manifest")
    manifest = {"key": folder.name, "format": FORMAT, "geometry_hash": geom.hash,
                "transform": cfg.model_dump(), "fractions": list(fractions), "ranges": ranges,
                "counts": counts, "skipped_showers": skipped, "shards": shards,
                "scaler": Scaler.fit(stats).to_dict()}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


class _pool:
    """A spawn pool when workers > 1, whose ``imap`` keeps at most 2 x workers chunks in
    flight (results in order); closed and joined on exit, terminated on error."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers <= 1:
            return None
        self.pool = mp.get_context("spawn").Pool(self.workers)
        return self

    def imap(self, fn, items):
        return in_order((self.pool.apply_async(fn, (item,)) for item in items),
                        lambda task: task.get(), 2 * self.workers)

    def __exit__(self, kind, value, tb):
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
        return False


def read_manifest(folder: str | Path) -> dict:
    """A cache's manifest; a clear error for a folder that is not a complete cache."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FastShowerError(f"{folder} is not a graph cache (no manifest.json); make one "
                              "with `fastshower preprocess`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise FastShowerError(f"{folder} is a graph cache of an older format; preprocess again")
    return manifest


def shard_files(folder: str | Path, split: str) -> list[Path]:
    return sorted(Path(folder).glob(f"shard_{split}_*.npz"))


def read_split(folder: str | Path, split: str) -> GraphChunk:
    """All raw graphs of one split of a cache."""
    read_manifest(folder)
    nodes = np.load(Path(folder) / "nodes.npy")
    shards = [GraphChunk.load(f, nodes) for f in shard_files(folder, split)]
    if not shards:
        raise FastShowerError(f"{folder} has no {split} showers")
    return GraphChunk.concatenate(shards)


class ShardDataset(IterableDataset):
    """Scaled batches of one split, shard by shard: shards are dealt to DataLoader workers in
    turn, shuffled within a shard by (seed, epoch, shard) when ``shuffle``, and cut into
    batches of ``batch_size`` showers (the rest carried into the next shard of the same
    worker). Batches are built from the shard's flat arrays (``graphs.to_batch``)."""

    def __init__(self, folder: str | Path, split: str = "train", batch_size: int = 64,
                 shuffle: bool = False, seed: int = 0, epoch: int = 0):
        self.folder = Path(folder)
        self.scaler = Scaler.from_dict(read_manifest(folder)["scaler"])
        self.nodes = np.load(self.folder / "nodes.npy")
        self.shards = shard_files(folder, split)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch

    def __iter__(self):
        info = get_worker_info()
        shards = self.shards
        if self.shuffle:  # shard order too, so that a shower meets others than its shard's
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        mine = shards[info.id::info.num_workers] if info else shards
        parts, have = [], 0  # pieces of the next batch, which may span two shards
        for shard in mine:
            chunk = GraphChunk.load(shard, self.nodes)
            order = (np.random.default_rng([self.seed, self.epoch, int(shard.stem[-5:])])
                     .permutation(len(chunk)) if self.shuffle else np.arange(len(chunk)))
            pos = 0
            while pos < len(order):
                take = order[pos:pos + self.batch_size - have]
                parts.append(chunk.select(take))
                have, pos = have + len(take), pos + len(take)
                if have == self.batch_size:
                    yield self._batch(parts)
                    parts, have = [], 0
        if parts:
            yield self._batch(parts)

    def _batch(self, parts: list[GraphChunk]):
        return to_batch(parts[0] if len(parts) == 1 else GraphChunk.concatenate(parts),
                        self.scaler)


def batches(folder: str | Path, split: str = "train", batch_size: int = 64, workers: int = 0,
            shuffle: bool = False, seed: int = 0, epoch: int = 0) -> DataLoader:
    """torch_geometric batches of a cached split, prepared in ``workers`` spawned processes
    (bounded: each keeps at most 2 batches ready)."""
    ds = ShardDataset(folder, split, batch_size, shuffle, seed, epoch)
    return DataLoader(ds, batch_size=None, num_workers=workers,
                      multiprocessing_context="spawn" if workers else None,
                      prefetch_factor=2 if workers else None)
