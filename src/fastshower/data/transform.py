"""Showers -> graphs (node = hit cell), vectorised over a whole chunk of showers.

Nodes: cells above a threshold, with raw features (energy MeV, x, y, z mm, layer, cell type,
linear size mm); edges: the geometry's neighbour graph restricted to the hit cells; condition:
(log incident energy/GeV, eta, phi, PDG id). A chunk's graphs are kept together as flat arrays
(``GraphChunk``, the layout of a collated batch), so no per-shower object is ever made here.
This module needs numpy only: preprocessing workers start without importing torch. Scaling
and torch_geometric batches are in ``graphs.py``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.simhits import Primaries, ShowerBatch, read_showers

NODE_FEATURES = ("energy", "x", "y", "z", "layer", "type", "size")
CONDITION = ("log_energy_gev", "eta", "phi", "pdg")


class TransformConfig(BaseModel):
    """Hit selection. ``threshold_mip``: per cell, in units of its sensor's MIP energy;
    ``threshold_kev`` (if set) is used instead; ``max_hits``: keep the N most energetic.
    ``bad_showers``: a shower with a NaN/negative energy or a cell id outside the geometry
    stops preprocessing with an error naming file and shower ('raise'), or is left out and
    counted in the cache's manifest ('skip')."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    threshold_mip: float = Field(0.5, ge=0)
    threshold_kev: float | None = Field(None, ge=0)
    max_hits: int | None = Field(None, gt=0)
    bad_showers: str = Field("raise", pattern="^(raise|skip)$")


def conditions(primaries: Primaries) -> np.ndarray:
    """(n, 4) float32: log(E/GeV), eta and phi of the primary direction, PDG id."""
    eta, phi = primaries.eta_phi()
    return np.stack([np.log(primaries.energy_mev / 1000.0), eta, phi,
                     primaries.pdg.astype(np.float64)], -1).astype(np.float32)


def bad_showers(event: np.ndarray, ids: np.ndarray, energy: np.ndarray,
                n_cells: int) -> tuple[np.ndarray, str]:
    """Indices of showers with a NaN, infinite or negative energy or a cell id outside
    0..n_cells-1, and a one-line reason for the first of them ('' when none)."""
    bad_energy = ~np.isfinite(energy) | (energy < 0)
    outside = (ids < 0) | (ids >= n_cells)
    showers = np.unique(event[bad_energy | outside])
    if not len(showers):
        return showers, ""
    first = showers[0]
    if bad_energy[event == first].any():
        return showers, f"shower {first} has a NaN, infinite or negative cell energy"
    cell = ids[(event == first) & outside][0]
    return showers, f"shower {first} has cell id {cell} outside the geometry (0..{n_cells - 1})"


def select_hits(batch: ShowerBatch, geom: Geometry, cfg: TransformConfig, where: str = ""):
    """(shower index, cell id, energy) of the kept hits, sorted by shower then cell id.

    Duplicate (shower, cell) entries are summed (files from the simulation have none and are
    sorted: then nothing is re-sorted); bad values raise a clear error naming ``where`` (a
    file) and the shower.
    """
    event, ids, energy = batch.flat()
    bad, reason = bad_showers(event, ids, energy, geom.n_cells)
    if len(bad):
        raise FastShowerError(f"{where}: {reason}")
    key = event * geom.n_cells + ids
    if len(key) > 1 and not (key[1:] > key[:-1]).all():
        key, inverse = np.unique(key, return_inverse=True)
        energy = np.bincount(inverse, weights=energy)
        event, ids = key // geom.n_cells, key % geom.n_cells
    threshold = (cfg.threshold_kev * 1e-3 if cfg.threshold_kev is not None
                 else cfg.threshold_mip * geom.mip_energy[ids])
    keep = energy > threshold
    event, ids, energy = event[keep], ids[keep], energy[keep]
    if cfg.max_hits is not None:
        order = np.lexsort((-energy, event))
        starts = np.searchsorted(event[order], event[order], side="left")
        rank = np.arange(len(order)) - starts
        top = np.sort(order[rank < cfg.max_hits])
        event, ids, energy = event[top], ids[top], energy[top]
    return event, ids, energy


@numba.njit(cache=True, nogil=True)
def _hit_edges(node_ptr, ids, indptr, neighbours, table, out, edge_ptr):  # pragma: no cover
    """Fills ``out`` (2, >= candidates) and ``edge_ptr``; returns the number of edges.
    ``table`` (n_cells,) is all -1 on entry and on exit."""
    k = 0
    for s in range(len(node_ptr) - 1):
        lo, hi = node_ptr[s], node_ptr[s + 1]
        for h in range(lo, hi):  # cell -> hit index within this shower
            table[ids[h]] = h - lo
        for h in range(lo, hi):
            for j in range(indptr[ids[h]], indptr[ids[h] + 1]):
                other = table[neighbours[j]]
                out[0, k] = h - lo  # written always, kept when found: no branch to mispredict
                out[1, k] = other
                k += other >= 0
        for h in range(lo, hi):
            table[ids[h]] = -1
        edge_ptr[s + 1] = k
    return k


_SCRATCH = {"out": np.empty((2, 0), np.int32)}  # per process, reused: fresh memory is slow
_LOCK = threading.Lock()
GROUP = 64  # showers per call of the loop: its buffer stays a few MB


def graph_edges(geom: Geometry, node_ptr: np.ndarray,
                ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometry edges between the hit cells of each shower: ((2, E) int32 node indices local
    to their shower, (n + 1,) edge offsets per shower).

    ``ids`` sorted by cell within each shower; edges come out in the order of the geometry's
    CSR rows. This is a compiled loop (numba): the same in numpy needs a dozen passes over
    ~10 candidate neighbours per hit and ran 4x slower (docs/data.md).
    """
    indptr, neighbours = _cached(geom, "csr32", lambda: (geom.csr[0].astype(np.int64),
                                                         geom.csr[1].astype(np.int32)))
    table = _cached(geom, "table", lambda: np.full(geom.n_cells, -1, np.int32))
    ids = ids.astype(np.int32)
    before = np.concatenate([[0], np.cumsum(indptr[ids + 1] - indptr[ids])])  # candidates
    edge_ptr = np.zeros(len(node_ptr), np.int64)
    parts = []
    with _LOCK:
        for lo in range(0, len(node_ptr) - 1, GROUP):
            hi = min(lo + GROUP, len(node_ptr) - 1)
            need = int(before[node_ptr[hi]] - before[node_ptr[lo]])
            if _SCRATCH["out"].shape[1] < need:
                _SCRATCH["out"] = np.empty((2, need), np.int32)
            k = _hit_edges(node_ptr[lo:hi + 1], ids, indptr, neighbours, table,
                           _SCRATCH["out"], edge_ptr[lo:hi + 1])
            edge_ptr[lo + 1:hi + 1] += edge_ptr[lo]
            parts.append(_SCRATCH["out"][:, :k].copy())
    return (np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.int32)), edge_ptr


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + count)`` for every pair, vectorised."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - ends + counts, counts)


@dataclass
class GraphChunk:
    """The graphs of many showers as flat arrays, the layout of a collated batch: the nodes of
    shower s are rows node_ptr[s]:node_ptr[s + 1] of ``x`` and ``cell_id``, its edges columns
    edge_ptr[s]:edge_ptr[s + 1] of ``edge_index`` (node indices counted within the shower)."""

    x: np.ndarray  # (N, 7) float32, NODE_FEATURES, raw
    cell_id: np.ndarray  # (N,) int32
    edge_index: np.ndarray  # (2, E) int32 (uint16 as read from a shard of small showers)
    node_ptr: np.ndarray  # (n + 1,) int64
    edge_ptr: np.ndarray  # (n + 1,) int64
    cond: np.ndarray  # (n, 4) float32, CONDITION

    def __len__(self) -> int:
        return len(self.cond)

    def select(self, index) -> GraphChunk:
        """The showers ``index`` (an index array, in that order), vectorised."""
        index = np.asarray(index, dtype=np.int64)
        n_nodes, n_edges = np.diff(self.node_ptr)[index], np.diff(self.edge_ptr)[index]
        nodes = ranges(self.node_ptr[index], n_nodes)
        edges = ranges(self.edge_ptr[index], n_edges)
        return GraphChunk(np.take(self.x, nodes, axis=0), np.take(self.cell_id, nodes),
                          np.take(self.edge_index, edges, axis=1),  # take: 3-10x faster
                          _offsets(n_nodes), _offsets(n_edges), self.cond[index])

    @staticmethod
    def concatenate(chunks: list[GraphChunk]) -> GraphChunk:
        return GraphChunk(
            np.concatenate([c.x for c in chunks]), np.concatenate([c.cell_id for c in chunks]),
            np.concatenate([c.edge_index for c in chunks], axis=1),
            _offsets(np.concatenate([np.diff(c.node_ptr) for c in chunks])),
            _offsets(np.concatenate([np.diff(c.edge_ptr) for c in chunks])),
            np.concatenate([c.cond for c in chunks]))

    def save(self, path: str | Path) -> None:
        """An uncompressed .npz without the cell-constant features (they come back from the
        geometry's node table on ``load``), edges as uint16 where showers are small enough:
        about a third of the bytes of the full arrays, so writing and reading are cheaper."""
        small = len(self) == 0 or np.diff(self.node_ptr).max() <= np.iinfo(np.uint16).max
        with open(path, "wb") as f:
            np.savez(f, energy=self.x[:, 0], cell_id=self.cell_id, node_ptr=self.node_ptr,
                     edge_index=self.edge_index.astype(np.uint16 if small else np.int32),
                     edge_ptr=self.edge_ptr, cond=self.cond)

    @staticmethod
    def load(path: str | Path, nodes: np.ndarray) -> GraphChunk:
        """A saved chunk; ``nodes``: the node table (``node_table``) of its geometry."""
        with np.load(path) as z:
            x = np.take(nodes, z["cell_id"], axis=0)
            x[:, 0] = z["energy"]
            return GraphChunk(x, z["cell_id"], z["edge_index"], z["node_ptr"], z["edge_ptr"],
                              z["cond"])


class Moments:
    """Sums and sums of squares of node features (log energy) and conditions, in float64,
    mergeable: workers compute them per chunk, the training split's are added up."""

    def __init__(self):
        self.n = self.n_cond = 0
        self.s = self.s2 = np.zeros(len(NODE_FEATURES))
        self.c = self.c2 = np.zeros(len(CONDITION))

    def add(self, chunk: GraphChunk) -> Moments:
        xt = np.array(chunk.x.T, order="C")  # a copy with features as rows: contiguous sums
        xt[0] = np.log(xt[0])
        ct = np.ascontiguousarray(chunk.cond.T, dtype=np.float64)
        self.n, self.n_cond = self.n + xt.shape[1], self.n_cond + ct.shape[1]
        self.s = self.s + xt.sum(1, dtype=np.float64)
        self.s2 = self.s2 + np.einsum("ij,ij->i", xt, xt, dtype=np.float64)
        self.c, self.c2 = self.c + ct.sum(1), self.c2 + (ct**2).sum(1)
        return self

    def merge(self, other: Moments) -> None:
        self.n, self.n_cond = self.n + other.n, self.n_cond + other.n_cond
        self.s, self.s2 = self.s + other.s, self.s2 + other.s2
        self.c, self.c2 = self.c + other.c, self.c2 + other.c2

    def mean_std(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(feature mean, feature std, condition mean, condition std)."""
        mean, cond_mean = self.s / self.n, self.c / self.n_cond
        return (mean, np.sqrt(np.clip(self.s2 / self.n - mean**2, 0, None)), cond_mean,
                np.sqrt(np.clip(self.c2 / self.n_cond - cond_mean**2, 0, None)))


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _cached(geom: Geometry, name: str, make):
    """A per-geometry array made once (kept on the geometry object)."""
    key = f"_transform_{name}"
    if key not in geom.__dict__:
        geom.__dict__[key] = make()
    return geom.__dict__[key]


def node_table(geom: Geometry) -> np.ndarray:
    """(n_cells, 7) float32 node features of every cell, energy column zero."""
    c = geom.cells
    return _cached(geom, "nodes", lambda: np.stack(
        [np.zeros(geom.n_cells), c["x"], c["y"], c["z"], c["layer"], c["type"],
         np.sqrt(c["area"])], -1).astype(np.float32))


def to_chunk(batch: ShowerBatch, geom: Geometry, cfg: TransformConfig,
             where: str = "") -> GraphChunk:
    """The graphs of all showers of ``batch`` (see the module docstring)."""
    event, ids, energy = select_hits(batch, geom, cfg, where)
    node_ptr = np.searchsorted(event, np.arange(len(batch) + 1)).astype(np.int64)
    x = np.take(node_table(geom), ids, axis=0)
    x[:, 0] = energy
    edge_index, edge_ptr = graph_edges(geom, node_ptr, ids)
    return GraphChunk(x, ids.astype(np.int32), edge_index, node_ptr, edge_ptr,
                      conditions(batch.primaries))


def good_showers(batch: ShowerBatch, geom: Geometry) -> np.ndarray:
    """Indices of the showers of ``batch`` that are not bad (see ``bad_showers``)."""
    bad, _ = bad_showers(*batch.flat(), geom.n_cells)
    return np.setdiff1d(np.arange(len(batch)), bad)


_GEOMETRY: dict[str, Geometry] = {}  # per worker process: each geometry loaded once


def transform_file_range(task: tuple) -> tuple[dict[str, tuple[int, Moments | None]], int]:
    """Worker: read showers [start, stop) of one file once, transform them and save the
    graphs of each split they belong to as the shard ``<folder>/shard_<split>_<index>.npz``.

    ``splits`` maps split names to their [first, last) shower range in the file. Returns, per
    split written, the number of graphs and (training split only) their feature moments, and
    the number of bad showers left out (``bad_showers='skip'``)."""
    from fastshower.geometry import load

    geometry, cfg, file, start, stop, splits, folder, index = task
    cfg = TransformConfig(**cfg)
    if geometry not in _GEOMETRY:
        _GEOMETRY[geometry] = load(geometry)
    geom = _GEOMETRY[geometry]
    try:
        batch = read_showers(file, start, stop)
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds for a damaged file
        raise FastShowerError(f"{file}: cannot read showers {start}-{stop}: {err}") from None
    kept = np.arange(len(batch))
    if cfg.bad_showers == "skip":
        kept = good_showers(batch, geom)
        batch = batch.subset(kept)
    chunk = to_chunk(batch, geom, cfg, where=f"{file} (showers from {start})")
    position = start + kept  # of each graph in the file
    out = {}
    for split, (lo, hi) in splits.items():
        if lo < stop and hi > start:
            part = chunk.select(np.flatnonzero((position >= lo) & (position < hi)))
            part.save(Path(folder) / f"shard_{split}_{index:05d}.npz")
            out[split] = (len(part), Moments().add(part) if split == "train" else None)
    return out, stop - start - len(kept)
