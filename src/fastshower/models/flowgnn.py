"""FlowGNN: a two-stage learned shower generator, conditional on energy, direction and particle.

Stage 1, ``LayerFlow``: a conditional normalizing flow (neural spline coupling flow, zuko) over
the layer-level shower: per layer the log energy fraction and the log hit count, plus the
shower's transverse centre; it carries the correlations between layers (depth, leakage,
response fluctuations).
Stage 2, ``CellNet``: a graph network over the cells of a layer (nodes = detector cells,
edges = the geometry's in-layer neighbour graph); per cell it predicts the probability to be a
hit and the distribution of its energy, given the layer-level quantities of stage 1. A layer's
N hits are drawn without replacement with the Gumbel-top-N trick on the hit log-odds, their
energies from the predicted log-normal, rescaled to the layer energy.

Approximations, named: given the layer-level quantities, cells are independent apart from the
fixed hit count and energy sum of their layer; drawing N cells with probability proportional
to their odds approximates the conditional Bernoulli law; hit times are times of flight.
"""

from __future__ import annotations

import numpy as np
import torch
import zuko
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch_geometric.nn import GraphConv

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.showers import (
    THRESHOLD_MIP,
    axis_points,
    direction_eta_phi,
    layer_summary,
    merged_hits,
    particle_index,
    to_batch,
)
from fastshower.simhits import ShowerBatch
from fastshower.validation.observables import depth_x0

CENTRE_SCALE = 5.0  # mm
OFFSET_SCALE = 30.0  # mm
E_DEQUANT = 0.02  # MeV: uniform noise added to layer energies (well below half a MIP)


class FlowGNNConfig(BaseModel):
    """Sizes of the two stages."""

    model_config = ConfigDict(extra="forbid")

    flow_transforms: int = 6
    flow_hidden: int = 256
    flow_bins: int = 8
    gnn_hidden: int = 48
    gnn_layers: int = 3


class LayerFlow(nn.Module):
    """p(layer-level vector (n, 2L + 2) | context (n, C)) as a spline coupling flow."""

    def __init__(self, features: int, context: int, cfg: FlowGNNConfig):
        super().__init__()
        self.flow = zuko.flows.NSF(features, context, bins=cfg.flow_bins,
                                   transforms=cfg.flow_transforms, passes=2, randperm=True,
                                   hidden_features=[cfg.flow_hidden] * 2)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.flow(c).log_prob(x)

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        return self.flow(c).sample()


class CellNet(nn.Module):
    """Per-cell (hit log-odds, mu, log sigma) from node features (N, F) on the cell graph."""

    def __init__(self, features: int, cfg: FlowGNNConfig):
        super().__init__()
        h = cfg.gnn_hidden
        self.embed = nn.Sequential(nn.Linear(features, h), nn.SiLU(), nn.Linear(h, h))
        self.convs = nn.ModuleList(GraphConv(h, h, aggr="mean") for _ in range(cfg.gnn_layers))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for conv in self.convs:
            h = h + torch.nn.functional.silu(conv(h, edge_index))
        return self.head(h)


class LayerGraphs:
    """The geometry's cells grouped by layer (contiguous id ranges) with in-layer edges in
    local indices: the node sets CellNet runs on."""

    def __init__(self, geom: Geometry):
        layer = geom.cells["layer"]
        self.n_layers = len(geom.layers)
        self.start = np.searchsorted(layer, np.arange(self.n_layers + 1))
        if not np.all(np.diff(layer) >= 0):
            raise FastShowerError("FlowGNN needs cells sorted by layer (geometry keys are)")
        src, dst = geom.edges.astype(np.int64)
        same = layer[src] == layer[dst]
        src, dst = src[same], dst[same]
        order = np.argsort(layer[src], kind="stable")
        src, dst = src[order], dst[order]
        bounds = np.searchsorted(layer[src], np.arange(self.n_layers + 1))
        self.edges = [np.stack([src[bounds[i]:bounds[i + 1]] - self.start[i],
                                dst[bounds[i]:bounds[i + 1]] - self.start[i]])
                      for i in range(self.n_layers)]
        c = geom.cells
        self.static = np.stack([np.log(c["area"] / 100.0), c["type"].astype(np.float64),
                                c["thickness"] / 0.3], -1).astype(np.float32)
        self.threshold = (THRESHOLD_MIP * geom.mip_energy).astype(np.float32)

    def size(self, layer: np.ndarray) -> np.ndarray:
        return self.start[layer + 1] - self.start[layer]

    def batch(self, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For pairs on ``layers`` (P,): (cell ids (N,), pair index (N,), edge_index (2, E))."""
        sizes = self.size(layers)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        pair = np.repeat(np.arange(len(layers)), sizes)
        ids = self.start[layers][pair] + np.arange(offsets[-1]) - offsets[pair]
        edges = np.concatenate([self.edges[lay] + offsets[k] for k, lay in enumerate(layers)],
                               axis=1) if len(layers) else np.zeros((2, 0), np.int64)
        return ids, pair, edges


class FlowGNN(nn.Module):
    """The two stages plus the normalisation constants fitted on the training sample."""

    name = "flowgnn"

    def __init__(self, geom: Geometry, particles: list[str], cfg: FlowGNNConfig,
                 norms: dict[str, list] | None = None):
        super().__init__()
        self.cfg, self.particles = cfg, particles
        self.geom_hash = geom.hash
        self.n_layers = len(geom.layers)
        self.context_dim = 3 + len(particles)
        self.flow = LayerFlow(2 * self.n_layers + 2, self.context_dim, cfg)
        self.cells = CellNet(12 + self.context_dim, cfg)
        self.norms = norms or {}
        self._geom = geom
        self._graphs = LayerGraphs(geom)
        self._depth = depth_x0(geom).astype(np.float32)

    # ---- conditions and layer-level vectors -------------------------------------------------
    def context(self, primaries: dict[str, np.ndarray]) -> torch.Tensor:
        """(n, C): standardised ln E, eta, phi, particle one-hot."""
        eta, phi = direction_eta_phi(primaries)
        m, s = self.norms["context_mean"], self.norms["context_std"]
        num = (np.stack([np.log(primaries["primary_energy"]), eta, phi], -1) - m) / s
        onehot = np.eye(len(self.particles))[particle_index(primaries["primary_pdg"],
                                                            self.particles)]
        return torch.from_numpy(np.concatenate([num, onehot], -1).astype(np.float32))

    def outside_range(self, primaries: dict[str, np.ndarray]) -> list[str]:
        """The conditions outside the training range (3 % margin on energy, 2 % of the
        range on angles), as readable lines; empty when all are inside."""
        eta, phi = direction_eta_phi(primaries)
        values = {"energy (GeV)": primaries["primary_energy"] / 1e3, "eta": eta,
                  "phi (deg)": np.rad2deg(phi)}
        out = []
        for name, (lo, hi) in self.norms["ranges"].items():
            v = values[name]
            margin = (0.03 * lo, 0.03 * hi) if name.startswith("energy") else (
                (0.02 * (hi - lo) + 1e-6,) * 2)
            if v.min() < lo - margin[0] or v.max() > hi + margin[1]:
                out.append(f"{name} {v.min():.4g}..{v.max():.4g} is outside the training range "
                           f"{lo:.4g}..{hi:.4g}")
        return out

    @staticmethod
    def layer_vector(e_layer, n_layer, centre, e_inc, rng: np.random.Generator) -> np.ndarray:
        """(n, 2L + 2) unscaled flow features, dequantised: ln(E_l / E_inc), ln(1 + N_l), centre."""
        u = np.log((e_layer + rng.uniform(0, E_DEQUANT, e_layer.shape)) / e_inc[:, None])
        v = np.log1p(n_layer + rng.uniform(0, 1, n_layer.shape))
        return np.concatenate([u, v, centre / CENTRE_SCALE], -1).astype(np.float32)

    def decode_layers(self, x: np.ndarray, e_inc: np.ndarray):
        """Flow output -> (E_l (n, L) MeV, N_l (n, L) int, centre (n, 2) mm)."""
        n_l = self.n_layers
        sizes = self._graphs.size(np.arange(n_l))
        hits = np.clip(np.floor(np.expm1(np.clip(x[:, n_l:2 * n_l], 0, 12))), 0, sizes)
        energy = np.exp(np.clip(x[:, :n_l], -30, 2)) * e_inc[:, None]
        energy = np.where(hits > 0, energy, 0.0)
        return energy, hits.astype(np.int64), x[:, 2 * n_l:] * CENTRE_SCALE

    # ---- stage 2 node features ---------------------------------------------------------------
    def node_inputs(self, ids, pair, pair_event, pair_layer, axis, centre, e_layer, n_layer,
                    ctx, mean_depth) -> torch.Tensor:
        """(N, F) features of the cells of (shower, layer) pairs; see the module docstring."""
        c = self._geom.cells
        ev, lay = pair_event[pair], pair_layer[pair]
        dx = (c["x"][ids] - axis[ev, lay, 0] - centre[ev, 0]) / OFFSET_SCALE
        dy = (c["y"][ids] - axis[ev, lay, 1] - centre[ev, 1]) / OFFSET_SCALE
        r = np.hypot(dx, dy)
        e_l, n_hits = e_layer[ev, lay], n_layer[ev, lay]
        depth = self._depth[lay]
        per_pair = np.stack([
            np.log(np.maximum(e_l, 1e-3)) / 5.0, np.log1p(n_hits) / 5.0,
            np.log(np.maximum(e_l / np.maximum(n_hits, 1), 1e-3)),
            depth / 10.0, (depth - mean_depth[ev]) / 5.0], -1)
        x = np.concatenate([np.stack([dx, dy, r, np.log(r + 0.05)], -1), self._graphs.static[ids],
                            per_pair, ctx[ev]], -1)
        return torch.from_numpy(x.astype(np.float32))

    # ---- training ----------------------------------------------------------------------------
    def flow_loss(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x, c).mean() / x.shape[1]

    def cell_loss(self, inputs: torch.Tensor, edges: torch.Tensor, is_hit: torch.Tensor,
                  log_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE of hit / no hit, Gaussian NLL of ln(e / mean hit energy) for hits)."""
        out = self.cells(inputs, edges)
        bce = nn.functional.binary_cross_entropy_with_logits(out[:, 0], is_hit)
        mu, log_sigma = out[is_hit > 0, 1], out[is_hit > 0, 2].clamp(-4, 2)
        nll = (log_sigma + 0.5 * ((log_e - mu) / log_sigma.exp()) ** 2).mean()
        return bce, nll

    # ---- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, primaries: dict[str, np.ndarray], rng: np.random.Generator,
                 pairs_per_chunk: int = 256, allow_extrapolation: bool = False) -> ShowerBatch:
        """Showers for the given primaries (MeV, mm), placed on the geometry's cells.
        Conditions outside the training range raise, unless ``allow_extrapolation``."""
        self.eval()
        outside = self.outside_range(primaries)
        if outside and not allow_extrapolation:
            raise FastShowerError("; ".join(outside) + " (allow extrapolation explicitly to "
                                  "generate anyway)")
        e_inc = primaries["primary_energy"].astype(np.float64)
        ctx = self.context(primaries)
        torch.manual_seed(int(rng.integers(2**62)))
        x = self.flow.sample(ctx).numpy() * self.norms["flow_std"] + self.norms["flow_mean"]
        e_layer, n_layer, centre = self.decode_layers(x, e_inc)
        mean_depth = (e_layer @ self._depth) / np.maximum(e_layer.sum(1), 1e-9)
        axis = axis_points(primaries, self._geom)
        pair_event, pair_layer = np.nonzero(n_layer)
        out_ev, out_id, out_e = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
        for lo in range(0, len(pair_event), pairs_per_chunk):
            pe, pl = pair_event[lo:lo + pairs_per_chunk], pair_layer[lo:lo + pairs_per_chunk]
            ids, pair, edges = self._graphs.batch(pl)
            inputs = self.node_inputs(ids, pair, pe, pl, axis, centre, e_layer, n_layer,
                                      ctx.numpy(), mean_depth)
            out = self.cells(inputs, torch.from_numpy(edges)).numpy().astype(np.float64)
            keep = gumbel_top_k(out[:, 0], pair, n_layer[pe, pl], rng)
            ids, pair, out = ids[keep], pair[keep], out[keep]
            mean_e = e_layer[pe, pl] / n_layer[pe, pl]
            e = mean_e[pair] * np.exp(out[:, 1] + np.exp(np.clip(out[:, 2], -4, 2))
                                      * rng.standard_normal(len(ids)))
            scale = e_layer[pe, pl] / np.maximum(np.bincount(pair, e, len(pe)), 1e-12)
            e = np.maximum(e * scale[pair], 1.02 * self._graphs.threshold[ids])
            out_ev.append(pe[pair])
            out_id.append(ids)
            out_e.append(e)
        return to_batch(primaries, self._geom, np.concatenate(out_ev), np.concatenate(out_id),
                        np.concatenate(out_e))

    # ---- persistence -------------------------------------------------------------------------
    def export(self) -> dict:
        return {"model": self.name, "config": self.cfg.model_dump(), "particles": self.particles,
                "geometry_hash": self.geom_hash, "norms": self.norms,
                "state_dict": self.state_dict()}

    @classmethod
    def from_export(cls, d: dict, geom: Geometry) -> FlowGNN:
        if d["geometry_hash"] != geom.hash:
            raise FastShowerError(f"this model was trained on geometry {d['geometry_hash'][:12]}, "
                                  f"not {geom.short_hash}")
        model = cls(geom, d["particles"], FlowGNNConfig(**d["config"]), d["norms"])
        model.load_state_dict(d["state_dict"])
        return model.eval()


def gumbel_top_k(logits: np.ndarray, group: np.ndarray, k: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Indices of k[g] elements per group g drawn without replacement, each draw with
    probability proportional to exp(logit) among those left (Gumbel-top-k)."""
    score = logits + rng.gumbel(size=len(logits))
    order = np.lexsort((-score, group))
    starts = np.searchsorted(group[order], np.arange(len(k)))
    rank = np.arange(len(order)) - starts[group[order]]
    return np.sort(order[rank < k[group[order]]])


class TrainingData:
    """A training or validation split held in memory, ready for both stages' mini-batches."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        self.batch = batch
        self.primaries = batch.primaries
        self.e_layer, self.n_layer = layer_summary(batch, geom)
        event, ids, energy = merged_hits(batch, geom)
        axis = axis_points(batch.primaries, geom)
        layer = geom.cells["layer"][ids]
        dx = geom.cells["x"][ids] - axis[event, layer, 0]
        dy = geom.cells["y"][ids] - axis[event, layer, 1]
        w = np.bincount(event, energy, len(batch))
        self.centre = np.stack([np.bincount(event, energy * dx, len(batch)),
                                np.bincount(event, energy * dy, len(batch))], -1) / np.maximum(
            w, 1e-12)[:, None]
        above = energy > THRESHOLD_MIP * geom.mip_energy[ids]
        self.hit_event, self.hit_id, self.hit_energy = event[above], ids[above], energy[above]
        self.hit_key = self.hit_event * geom.n_cells + self.hit_id  # sorted
        self.axis = axis
        self.n_cells = geom.n_cells

    def __len__(self) -> int:
        return len(self.batch)

    def flow_batch(self, model: FlowGNN, index: np.ndarray, rng: np.random.Generator):
        x = model.layer_vector(self.e_layer[index], self.n_layer[index], self.centre[index],
                               self.primaries["primary_energy"][index], rng)
        x = (x - model.norms["flow_mean"]) / model.norms["flow_std"]
        ctx = model.context({k: v[index] for k, v in self.primaries.items()})
        return torch.from_numpy(x.astype(np.float32)), ctx

    def cell_batch(self, model: FlowGNN, n_pairs: int, rng: np.random.Generator):
        """Random (shower, layer) pairs with hits: node inputs, edges, hit flags, ln energies."""
        active_event, active_layer = np.nonzero(self.n_layer)
        pick = rng.choice(len(active_event), n_pairs, replace=False)
        pe, pl = active_event[pick], active_layer[pick]
        ids, pair, edges = model._graphs.batch(pl)
        ctx = model.context(self.primaries).numpy()
        mean_depth = (self.e_layer @ model._depth) / np.maximum(self.e_layer.sum(1), 1e-9)
        inputs = model.node_inputs(ids, pair, pe, pl, self.axis, self.centre, self.e_layer,
                                   self.n_layer, ctx, mean_depth)
        key = pe[pair] * self.n_cells + ids
        pos = np.clip(np.searchsorted(self.hit_key, key), 0, len(self.hit_key) - 1)
        hit = self.hit_key[pos] == key
        mean_e = self.e_layer[pe, pl] / self.n_layer[pe, pl]
        log_e = np.log(self.hit_energy[pos[hit]] / mean_e[pair[hit]])
        return (inputs, torch.from_numpy(edges), torch.from_numpy(hit.astype(np.float32)),
                torch.from_numpy(log_e.astype(np.float32)))


def fit_norms(data: TrainingData, particles: list[str], seed: int = 0) -> dict:
    """Standardisation constants and the condition ranges of the training split."""
    p = data.primaries
    eta, phi = direction_eta_phi(p)
    num = np.stack([np.log(p["primary_energy"]), eta, phi], -1)
    x = FlowGNN.layer_vector(data.e_layer, data.n_layer, data.centre, p["primary_energy"],
                             np.random.default_rng(seed))
    return {"context_mean": num.mean(0).tolist(), "context_std": (num.std(0) + 1e-6).tolist(),
            "flow_mean": x.mean(0).tolist(), "flow_std": (x.std(0) + 1e-3).tolist(),
            "particles": particles,
            "ranges": {"energy (GeV)": [float(p["primary_energy"].min() / 1e3),
                                        float(p["primary_energy"].max() / 1e3)],
                       "eta": [float(eta.min()), float(eta.max())],
                       "phi (deg)": [float(np.rad2deg(phi).min()),
                                     float(np.rad2deg(phi).max())]}}
