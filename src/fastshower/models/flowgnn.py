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

Approximations, named: every layer-level value the flow draws is clipped to the training
sample's range of that value (+5 %), which cuts the flow's rare far-tail outliers; given the
layer-level quantities, cells are independent apart from the fixed hit count and energy sum of
their layer; drawing N cells with probability proportional
to their odds approximates the conditional Bernoulli law; hit times are times of flight.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import zuko
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch_geometric.nn import MessagePassing

from fastshower.data.transform import TransformConfig, select_hits
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_points, centroid_depth, depth_x0
from fastshower.models.showers import (
    THRESHOLD_MIP,
    layer_summary,
    outside_range,
    particle_index,
    shower_centre,
    to_batch,
)
from fastshower.simhits import Primaries, ShowerBatch

CENTRE_SCALE = 5.0  # mm
OFFSET_SCALE = 30.0  # mm
E_DEQUANT = 0.02  # MeV: uniform noise added to layer energies (well below half a MIP)


class FlowGNNConfig(BaseModel):
    """Sizes of the two stages."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    flow_transforms: int = Field(4, gt=0)
    flow_hidden: int = Field(64, gt=0)
    flow_bins: int = Field(8, gt=1)
    gnn_hidden: int = Field(32, gt=0)
    gnn_layers: int = Field(3, gt=0)


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


class SharedGraphConv(MessagePassing):
    """GraphConv (x_i W_root + mean_j x_j W_rel) on P showers that share one cell graph.

    x: (N, P, H) for N cells and P showers; adj: (N, N) row-normalised sparse CSR adjacency.
    Message passing is fused into one sparse-dense product over all P showers at once.
    """

    def __init__(self, hidden: int):
        super().__init__(aggr="sum")
        self.lin_rel = nn.Linear(hidden, hidden)
        self.lin_root = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        n, p, h = x.shape
        mean = self.propagate(adj, x=x.reshape(n, p * h)).reshape(n, p, h)
        return self.lin_rel(mean) + self.lin_root(x)

    def message_and_aggregate(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return adj @ x


class CellNet(nn.Module):
    """Per-cell (hit log-odds, mu, log sigma) (N, P, 3) from node features (N, P, F)."""

    def __init__(self, features: int, cfg: FlowGNNConfig):
        super().__init__()
        h = cfg.gnn_hidden
        self.embed = nn.Sequential(nn.Linear(features, h), nn.SiLU(), nn.Linear(h, h))
        self.convs = nn.ModuleList(SharedGraphConv(h) for _ in range(cfg.gnn_layers))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for conv in self.convs:
            h = h + torch.nn.functional.silu(conv(h, adj))
        return self.head(h)


class LayerGraphs:
    """The geometry's cells grouped by layer (contiguous id ranges, as geometry keys sort them)
    and each layer's in-layer neighbour graph as a row-normalised sparse adjacency."""

    def __init__(self, geom: Geometry):
        layer = geom.cells["layer"]
        self.n_layers = len(geom.layers)
        if not np.all(np.diff(layer) >= 0):
            raise FastShowerError("FlowGNN needs cells sorted by layer (geometry keys are)")
        self.start = np.searchsorted(layer, np.arange(self.n_layers + 1))
        src, dst = geom.edges.astype(np.int64)
        same = layer[src] == layer[dst]
        src, dst = src[same], dst[same]
        self.adj = []
        for i in range(self.n_layers):
            lo, n = self.start[i], self.start[i + 1] - self.start[i]
            sel = layer[src] == i
            rows, cols = torch.from_numpy(dst[sel] - lo), torch.from_numpy(src[sel] - lo)
            deg = torch.bincount(rows, minlength=n).clamp(min=1).float()
            with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
                warnings.simplefilter("ignore", UserWarning)
                self.adj.append(torch.sparse_coo_tensor(
                    torch.stack([rows, cols]), 1.0 / deg[rows], (n, n),
                    check_invariants=True).coalesce().to_sparse_csr())
        c = geom.cells
        self.static = np.stack([np.log(c["area"] / 100.0), c["type"].astype(np.float64),
                                c["thickness"] / 0.3], -1).astype(np.float32)
        self.threshold = (THRESHOLD_MIP * geom.mip_energy).astype(np.float32)

    def size(self, layer) -> np.ndarray:
        return self.start[np.asarray(layer) + 1] - self.start[np.asarray(layer)]

    def ids(self, layer: int) -> np.ndarray:
        return np.arange(self.start[layer], self.start[layer + 1])


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
    def context(self, primaries: Primaries) -> torch.Tensor:
        """(n, C): standardised ln E, eta, phi, particle one-hot."""
        eta, phi = primaries.eta_phi()
        m, s = self.norms["context_mean"], self.norms["context_std"]
        num = (np.stack([np.log(primaries.energy_mev), eta, phi], -1) - m) / s
        onehot = np.eye(len(self.particles))[particle_index(primaries.pdg, self.particles)]
        return torch.from_numpy(np.concatenate([num, onehot], -1).astype(np.float32))

    def outside_range(self, primaries: Primaries) -> list[str]:
        """The conditions outside the training range, as readable lines (see showers)."""
        return outside_range(self.norms["ranges"], primaries)

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
    def group_inputs(self, layer: int, events: np.ndarray, axis, centre, e_layer, n_layer, ctx,
                     mean_depth) -> torch.Tensor:
        """(N, P, F) features of the N cells of ``layer`` for the P showers ``events``: offset
        from the shower axis, cell shape, the layer-level quantities, the conditions."""
        ids = self._graphs.ids(layer)
        c = self._geom.cells
        dx = (c["x"][ids, None] - axis[None, events, layer, 0] - centre[None, events, 0])
        dy = (c["y"][ids, None] - axis[None, events, layer, 1] - centre[None, events, 1])
        dx, dy = dx / OFFSET_SCALE, dy / OFFSET_SCALE
        r = np.hypot(dx, dy)
        e_l, n_hits = e_layer[events, layer], n_layer[events, layer]
        depth = self._depth[layer]
        per_pair = np.concatenate([np.stack([
            np.log(np.maximum(e_l, 1e-3)) / 5.0, np.log1p(n_hits) / 5.0,
            np.log(np.maximum(e_l / np.maximum(n_hits, 1), 1e-3)),
            np.full(len(events), depth / 10.0), (depth - mean_depth[events]) / 5.0], -1),
            ctx[events]], -1)
        n, p = r.shape
        x = np.concatenate([np.stack([dx, dy, r, np.log(r + 0.05)], -1),
                            np.broadcast_to(self._graphs.static[ids, None], (n, p, 3)),
                            np.broadcast_to(per_pair[None], (n, p, per_pair.shape[1]))], -1)
        return torch.from_numpy(x.astype(np.float32))

    # ---- training ----------------------------------------------------------------------------
    def flow_loss(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x, c).mean() / x.shape[1]

    def cell_loss(self, groups: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE of hit / no hit, Gaussian NLL of ln(e / mean hit energy) for hits), averaged
        over groups of (layer, inputs (N, P, F), hit flags (N, P), ln energies of the hits)."""
        bce, nll, n_cells, n_hits = self.cell_sums(groups)
        return bce / n_cells, nll / max(n_hits, 1)

    def cell_sums(self, groups: list) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """cell_loss as (BCE sum, NLL sum, cells, hits): sums add up over data-parallel ranks."""
        bce, nll, n_cells, n_hits = torch.zeros(()), torch.zeros(()), 0, 0
        for layer, inputs, is_hit, log_e in groups:
            out = self.cells(inputs, self._graphs.adj[layer])
            bce = bce + nn.functional.binary_cross_entropy_with_logits(
                out[..., 0], is_hit, reduction="sum")
            hit = is_hit > 0
            mu, log_sigma = out[..., 1][hit], out[..., 2][hit].clamp(-4, 2)
            nll = nll + (log_sigma + 0.5 * ((log_e - mu) / log_sigma.exp()) ** 2).sum()
            n_cells, n_hits = n_cells + is_hit.numel(), n_hits + int(hit.sum())
        return bce, nll, n_cells, n_hits

    # ---- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, primaries: Primaries, rng: np.random.Generator,
                 showers_per_chunk: int = 256, allow_extrapolation: bool = False) -> ShowerBatch:
        """Showers for the given primaries (MeV, mm), placed on the geometry's cells.
        Conditions outside the training range raise, unless ``allow_extrapolation``."""
        self.eval()
        outside = self.outside_range(primaries)
        if outside and not allow_extrapolation:
            raise FastShowerError("; ".join(outside) + " (allow extrapolation explicitly to "
                                  "generate anyway)")
        e_inc = primaries.energy_mev
        ctx = self.context(primaries)
        torch.manual_seed(int(rng.integers(2**62)))
        x = self.flow.sample(ctx).numpy() * self.norms["flow_std"] + self.norms["flow_mean"]
        if "flow_min" in self.norms:  # no value beyond the training sample's range (+5 %)
            lo, hi = np.asarray(self.norms["flow_min"]), np.asarray(self.norms["flow_max"])
            x = np.clip(x, lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        e_layer, n_layer, centre = self.decode_layers(x, e_inc)
        mean_depth = centroid_depth(e_layer, self._depth)
        axis = axis_points(primaries, self._geom)
        ctx = ctx.numpy()
        out_ev, out_id, out_e = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
        for layer in range(self.n_layers):
            active = np.flatnonzero(n_layer[:, layer])
            for lo in range(0, len(active), showers_per_chunk):
                events = active[lo:lo + showers_per_chunk]
                inputs = self.group_inputs(layer, events, axis, centre, e_layer, n_layer, ctx,
                                           mean_depth)
                out = self.cells(inputs, self._graphs.adj[layer]).numpy().astype(np.float64)
                cell, col = gumbel_top_k(out[..., 0], n_layer[events, layer], rng)
                ids = self._graphs.ids(layer)[cell]
                mu, log_sigma = out[cell, col, 1], np.clip(out[cell, col, 2], -4, 2)
                e = np.exp(mu + np.exp(log_sigma) * rng.standard_normal(len(cell)))
                scale = e_layer[events, layer] / np.maximum(np.bincount(col, e, len(events)),
                                                            1e-12)
                out_ev.append(events[col])
                out_id.append(ids)
                out_e.append(np.maximum(e * scale[col], 1.02 * self._graphs.threshold[ids]))
        return to_batch(primaries, self._geom, np.concatenate(out_ev), np.concatenate(out_id),
                        np.concatenate(out_e))

    # ---- persistence -------------------------------------------------------------------------
    def export(self, stages: dict[str, dict] | None = None) -> dict:
        """Everything generation needs; ``stages`` optionally gives the state of the flow and
        of the cell network separately (e.g. each at its best validation loss)."""
        state = self.state_dict() if stages is None else {
            **{f"flow.{k}": v for k, v in stages["flow"].items()},
            **{f"cells.{k}": v for k, v in stages["cells"].items()}}
        return {"model": self.name, "config": self.cfg.model_dump(), "particles": self.particles,
                "geometry_hash": self.geom_hash, "norms": self.norms, "state_dict": state}

    @classmethod
    def from_export(cls, d: dict, geom: Geometry) -> FlowGNN:
        geom.require_same(d["geometry_hash"], "this model")
        model = cls(geom, d["particles"], FlowGNNConfig(**d["config"]), d["norms"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in d["state_dict"].items()})
        return model.eval()


def gumbel_top_k(logits: np.ndarray, k: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For logits (N, P): k[p] rows of every column p drawn without replacement, each draw
    with probability proportional to exp(logit) among those left (the Gumbel-top-k trick).
    Returns (row, column) index arrays."""
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=0)
    take = np.arange(len(logits))[:, None] < k[None, :]
    return order[take], np.broadcast_to(np.arange(logits.shape[1]), logits.shape)[take]


class TrainingData:
    """A training or validation split held in memory, ready for both stages' mini-batches."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        self.batch = batch
        self.primaries = batch.primaries
        self.e_layer, self.n_layer = layer_summary(batch, geom)
        self.centre = shower_centre(batch, geom)
        self.hit_event, self.hit_id, self.hit_energy = select_hits(batch, geom,
                                                                   TransformConfig())
        self.hit_key = self.hit_event * geom.n_cells + self.hit_id  # sorted
        self.axis = axis_points(batch.primaries, geom)
        self.mean_depth = centroid_depth(self.e_layer, depth_x0(geom))
        self.n_cells = geom.n_cells

    def __len__(self) -> int:
        return len(self.batch)

    def flow_batch(self, model: FlowGNN, index: np.ndarray, rng: np.random.Generator):
        x = model.layer_vector(self.e_layer[index], self.n_layer[index], self.centre[index],
                               self.primaries.energy_mev[index], rng)
        x = (x - model.norms["flow_mean"]) / model.norms["flow_std"]
        ctx = model.context(self.primaries.subset(index))
        return torch.from_numpy(x.astype(np.float32)), ctx

    def cell_batch(self, model: FlowGNN, n_pairs: int, rng: np.random.Generator,
                   shard: tuple[int, int] = (0, 1)) -> list:
        """Random (shower, layer) pairs with hits, grouped by layer: a list of (layer,
        node inputs (N, P, F), hit flags (N, P), ln(energy / mean hit energy) of the hits).
        ``shard`` (rank, world): the rank's share of the pairs (the same draw on every rank)."""
        active_event, active_layer = np.nonzero(self.n_layer)
        pick = rng.choice(len(active_event), min(n_pairs, len(active_event)), replace=False)
        pick = pick[shard[0]::shard[1]]
        ctx = model.context(self.primaries).numpy()
        groups = []
        for layer in np.unique(active_layer[pick]):
            events = np.sort(active_event[pick][active_layer[pick] == layer])
            inputs = model.group_inputs(layer, events, self.axis, self.centre, self.e_layer,
                                        self.n_layer, ctx, self.mean_depth)
            ids = model._graphs.ids(layer)
            key = events[None, :] * self.n_cells + ids[:, None]  # (N, P)
            pos = np.clip(np.searchsorted(self.hit_key, key), 0, len(self.hit_key) - 1)
            hit = self.hit_key[pos] == key
            mean_e = self.e_layer[events, layer] / self.n_layer[events, layer]
            log_e = np.log(self.hit_energy[pos[hit]] / np.broadcast_to(mean_e, hit.shape)[hit])
            groups.append((int(layer), inputs, torch.from_numpy(hit.astype(np.float32)),
                           torch.from_numpy(log_e.astype(np.float32))))
        return groups


def fit_norms(data: TrainingData, particles: list[str], seed: int = 0) -> dict:
    """Standardisation constants and the condition ranges of the training split."""
    p = data.primaries
    eta, phi = p.eta_phi()
    num = np.stack([np.log(p.energy_mev), eta, phi], -1)
    x = FlowGNN.layer_vector(data.e_layer, data.n_layer, data.centre, p.energy_mev,
                             np.random.default_rng(seed))
    return {"context_mean": num.mean(0).tolist(), "context_std": (num.std(0) + 1e-6).tolist(),
            "flow_mean": x.mean(0).tolist(), "flow_std": (x.std(0) + 1e-3).tolist(),
            "flow_min": x.min(0).tolist(), "flow_max": x.max(0).tolist(),
            "particles": particles,
            "ranges": {"energy (GeV)": [float(p.energy_mev.min() / 1e3),
                                        float(p.energy_mev.max() / 1e3)],
                       "eta": [float(eta.min()), float(eta.max())],
                       "phi (deg)": [float(np.rad2deg(phi).min()),
                                     float(np.rad2deg(phi).max())]}}
