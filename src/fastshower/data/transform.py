"""Showers -> graphs (node = hit cell), vectorised over a whole chunk of showers.

Nodes: cells above a threshold, with raw features (energy MeV, x, y, z mm, layer, cell type,
linear size mm); edges: the geometry's neighbour graph restricted to the hit cells; condition:
(log incident energy/GeV, eta, phi, PDG id). Scaling is separate (``Scaler``) so that it can be
fitted on the training split only and inverted for generated graphs.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch_geometric.data import Data

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.simhits import ShowerBatch, direction_eta_phi

NODE_FEATURES = ("energy", "x", "y", "z", "layer", "type", "size")
CONDITION = ("log_energy_gev", "eta", "phi", "pdg")


class TransformConfig(BaseModel):
    """Hit selection. ``threshold_mip``: per cell, in units of its sensor's MIP energy;
    ``threshold_kev`` (if set) is used instead; ``max_hits``: keep the N most energetic."""

    model_config = ConfigDict(extra="forbid")

    threshold_mip: float = Field(0.5, ge=0)
    threshold_kev: float | None = Field(None, ge=0)
    max_hits: int | None = Field(None, gt=0)


def conditions(primaries: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 4) float32: log(E/GeV), eta and phi of the primary direction, PDG id."""
    eta, phi = direction_eta_phi(primaries)
    return np.stack([np.log(primaries["primary_energy"] / 1000.0), eta, phi,
                     primaries["primary_pdg"].astype(np.float64)], -1).astype(np.float32)


def select_hits(batch: ShowerBatch, geom: Geometry, cfg: TransformConfig, where: str = ""):
    """(shower index, cell id, energy) of the kept hits, sorted by shower then cell id.

    Duplicate (shower, cell) entries are summed; bad values raise a clear error naming
    ``where`` (a file) and the shower.
    """
    event, ids, energy = batch.flat()
    bad = ~np.isfinite(energy) | (energy < 0)
    if bad.any():
        raise FastShowerError(f"{where}: shower {event[bad][0]} has a NaN, infinite or "
                              "negative cell energy")
    outside = (ids < 0) | (ids >= geom.n_cells)
    if outside.any():
        raise FastShowerError(f"{where}: shower {event[outside][0]} has cell id "
                              f"{ids[outside][0]} outside the geometry (0..{geom.n_cells - 1})")
    key = event * geom.n_cells + ids
    uniq, inverse = np.unique(key, return_inverse=True)
    energy = np.bincount(inverse, weights=energy)
    event, ids = uniq // geom.n_cells, uniq % geom.n_cells
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


DENSE_LOOKUP_LIMIT = 1 << 24  # (showers in a chunk) x (cells): above this, binary search


def graph_edges(geom: Geometry, event: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(2, E) global hit-index pairs: geometry edges between hit cells of the same shower.

    ``event``/``ids`` sorted by (event, id). Neighbours come from the geometry's CSR rows; a
    neighbour is kept when it is a hit of the same shower, found through a dense
    (shower, cell) -> hit table when it fits in memory, else by binary search.
    """
    indptr, dst_all = geom.csr
    counts = indptr[ids + 1] - indptr[ids]
    hit = np.repeat(np.arange(len(ids)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    nbr = dst_all[np.repeat(indptr[ids], counts) + offsets]
    n_events = int(event.max()) + 1 if len(event) else 0
    keys = event * geom.n_cells + ids
    want = event[hit] * geom.n_cells + nbr
    if n_events * geom.n_cells <= DENSE_LOOKUP_LIMIT:
        table = np.full(n_events * geom.n_cells, -1, dtype=np.int32)
        table[keys] = np.arange(len(keys))
        pos = table[want]
        found = pos >= 0
    else:
        pos = np.clip(np.searchsorted(keys, want), 0, max(len(keys) - 1, 0))
        found = keys[pos] == want
    return np.stack([hit[found], pos[found]])


def to_graphs(batch: ShowerBatch, geom: Geometry, cfg: TransformConfig,
              where: str = "") -> list[Data]:
    """One torch_geometric Data per shower: x (n, 7) raw features, edge_index, cond (1, 4),
    cell_id (n,)."""
    event, ids, energy = select_hits(batch, geom, cfg, where)
    c = geom.cells
    x = np.stack([energy, c["x"][ids], c["y"][ids], c["z"][ids], c["layer"][ids], c["type"][ids],
                  np.sqrt(c["area"][ids])], -1).astype(np.float32)
    edges = graph_edges(geom, event, ids)
    counts = np.bincount(event, minlength=len(batch))
    first = np.concatenate([[0], np.cumsum(counts)])
    edge_event = event[edges[0]]
    edge_counts = np.bincount(edge_event, minlength=len(batch))
    edge_first = np.concatenate([[0], np.cumsum(edge_counts)])
    order = np.argsort(edge_event, kind="stable")
    edges = edges[:, order]
    cond = conditions(batch.primaries)
    graphs = []
    for i in range(len(batch)):
        lo, hi = first[i], first[i + 1]
        e = edges[:, edge_first[i]:edge_first[i + 1]] - lo
        graphs.append(Data(x=torch.from_numpy(x[lo:hi]), edge_index=torch.from_numpy(e),
                           cond=torch.from_numpy(cond[i:i + 1]),
                           cell_id=torch.from_numpy(ids[lo:hi].astype(np.int64))))
    return graphs


class Scaler:
    """Feature scaling fitted on training graphs: log energy and standardised features."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, cond_mean: np.ndarray,
                 cond_std: np.ndarray):
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.cond_mean = np.asarray(cond_mean, np.float32)
        self.cond_std = np.asarray(cond_std, np.float32)

    @staticmethod
    def fit(graphs: list[Data]) -> Scaler:
        x = torch.cat([g.x for g in graphs]).numpy().astype(np.float64)
        x[:, 0] = np.log(x[:, 0])
        cond = torch.cat([g.cond for g in graphs]).numpy().astype(np.float64)
        return Scaler(x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0), cond.mean(0),
                      np.where(cond.std(0) > 0, cond.std(0), 1.0))

    def transform(self, g: Data) -> Data:
        x = g.x.clone()
        x[:, 0] = torch.log(x[:, 0])
        g = g.clone()
        g.x = (x - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        g.cond = (g.cond - torch.from_numpy(self.cond_mean)) / torch.from_numpy(self.cond_std)
        return g

    def inverse_energy(self, scaled: torch.Tensor) -> torch.Tensor:
        """Cell energies in MeV from the scaled energy feature."""
        return torch.exp(scaled * float(self.std[0]) + float(self.mean[0]))

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "cond_mean", "cond_std")}

    @staticmethod
    def from_dict(d: dict) -> Scaler:
        return Scaler(**d)
