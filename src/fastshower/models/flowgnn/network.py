"""FlowGNN's networks: the layer-level spline flow, the cell graph network and the geometry's
per-layer cell graphs they run on."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import zuko
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch_geometric.nn import MessagePassing

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.showers import THRESHOLD_MIP
from fastshower.simhits import THETA_MIN

CENTRE_SCALE = 5.0  # mm
OFFSET_SCALE = 30.0  # mm
E_DEQUANT = 0.02  # MeV: uniform noise added to layer energies (well below half a MIP)


class LayerFlowConfig(BaseModel):
    """The layer-level flow's size and its showers per training step (the global batch under
    data parallelism); generators built on it add their own settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    flow_transforms: int = Field(4, gt=0)
    flow_hidden: int = Field(64, gt=0)
    flow_bins: int = Field(8, gt=1)
    flow_batch: int = Field(256, gt=0)


class FlowGNNConfig(LayerFlowConfig):
    """FlowGNN: the flow plus the cell network and its (shower, layer) pairs per step."""

    gnn_hidden: int = Field(32, gt=0)
    gnn_layers: int = Field(3, gt=0)
    cell_pairs: int = Field(24, gt=0)


class Spline(zuko.transforms.MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline with its knots computed in fewer passes over
    memory: the bins' softmax and cumulative sum as exp, one product with a triangular matrix
    and one division by the last column (on CPU torch's softmax and cumsum over a last axis of 8
    are far slower: 13 and 4 times, measured; a third of a shower's time in LayerHits went to
    building splines), in place where no gradient is needed. zuko's squashing keeps
    |logits| < -ln(slope) / 2, so exp cannot overflow. Same parameters and results (to float
    rounding) as zuko's ``NSF``."""

    def __init__(self, widths, heights, derivatives, bound: float = 5.0, slope: float = 1e-3):
        torch.distributions.Transform.__init__(self)
        squash = -2.0 / math.log(slope)
        self.horizontal = _knots(widths, squash, bound)
        self.vertical = _knots(heights, squash, bound)
        self.derivatives = torch.nn.functional.pad(_squashed_exp(derivatives, 0.5 * squash),
                                                   (1, 1), value=1.0)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        """zuko's inverse for knots of y's shape plus the last axis (as this flow builds them),
        without its general broadcasting (at batch 1 that took a third of the flow's time)."""
        k = (self.vertical < y[..., None]).sum(-1) - 1  # bin of y; -1 or bins: outside
        inside = (k >= 0) & (k < self.bins)
        k = k.clamp(0, self.bins - 1)  # a real bin outside too: no 0 / 0 in the unused branch
        ends = torch.stack([k, k + 1], -1)
        x0, x1 = self.horizontal.gather(-1, ends).unbind(-1)
        y0, y1 = self.vertical.gather(-1, ends).unbind(-1)
        d0, d1 = self.derivatives.gather(-1, ends).unbind(-1)
        s = (y1 - y0) / (x1 - x0)
        y_ = inside * (y - y0)
        a = (y1 - y0) * (s - d0) + y_ * (d0 + d1 - 2 * s)
        b = (y1 - y0) * d0 - y_ * (d0 + d1 - 2 * s)
        c = -s * y_
        z = 2 * c / (-b - (b**2 - 4 * a * c).sqrt())
        return torch.where(inside, x0 + z * (x1 - x0), y)


def _squashed_exp(x: torch.Tensor, s: float) -> torch.Tensor:
    """exp(x / (1 + |s x|)); without temporaries where x needs no gradient and is not traced
    for export (generation by torch): on CPU a fresh multi-MB tensor per step made this three
    times slower, measured."""
    if _recorded(x):
        return (x / (1 + abs(s * x))).exp()
    return x.abs().mul_(s).add_(1).reciprocal_().mul_(x).exp_()


def _recorded(x: torch.Tensor) -> bool:
    """Whether operations on x are recorded (for gradients, or traced for export)."""
    return x.requires_grad or torch.jit.is_tracing()


def _knots(logits: torch.Tensor, squash: float, bound: float) -> torch.Tensor:
    """Knots -bound ... bound (last axis K + 1) of bins whose widths are the softmax of the
    squashed logits (last axis K): cumulative sums of exp by a product with the K x (K + 1)
    matrix of ones above its diagonal, which also puts the first knot at 0."""
    k = logits.shape[-1]
    upper = (torch.arange(k)[:, None] < torch.arange(k + 1)).to(logits.dtype)
    c = _squashed_exp(logits, squash) @ upper
    if _recorded(c):
        return bound * (2 * c / c[..., -1:] - 1)
    return c.mul_(c[..., -1:].reciprocal().mul_(2 * bound)).sub_(bound)


class _MaskedOnce(nn.Module):
    """A zuko MaskedLinear for generation, optionally restricted to some of its output rows and
    input columns: its masked (and sliced) weight is formed once per change of the weights, not
    at every call (at batch 1 the product of the mask and a 128 x 2208 weight was a quarter of
    LayerHits' time, measured); parameters are the layer's own."""

    def __init__(self, layer: nn.Module, rows: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None):
        super().__init__()
        self.layer, self.version, self.weight, self.bias = layer, None, None, None
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.layer.weight
        if self.version != (w._version, w.data_ptr()) or torch.jit.is_tracing():
            weight, bias = self.layer.mask * w.detach(), self.layer.bias.detach()
            if self.rows is not None:
                weight, bias = weight[self.rows], bias[self.rows]
            if self.cols is not None:
                weight = weight[:, self.cols]
            self.version, self.weight, self.bias = (w._version, w.data_ptr()), weight, bias
        return torch.nn.functional.linear(x, self.weight, self.bias)


class _TwoPassInverse(nn.Module):
    """The inverse of one of zuko's two-pass masked autoregressive spline transforms, for
    generation: pass 1 gives the features of the first group from the context alone, pass 2
    those of the second from the first. Each pass evaluates only its group's rows of the
    hyper-network's output layer (hidden x (3 bins - 1) per feature: the bulk of the flow's
    arithmetic), ordered by part of the spline, and builds only its group's splines, where
    zuko's inverse evaluates and builds all of them in both passes; same results to float
    rounding."""

    def __init__(self, transform):
        super().__init__()
        order, total = transform.order, transform.total
        assert transform.univariate is Spline and transform.passes == 2
        self.bins = transform.shapes[0][0]
        groups = [torch.nonzero(order == g).squeeze(-1) for g in (0, 1)]
        assert sum(len(g) for g in groups) == len(order)
        d = len(order)
        context = torch.arange(d, transform.hyper[0].in_features)
        self.passes = nn.ModuleList()
        parts = torch.arange(total).split([self.bins, self.bins, self.bins - 1])
        for g, inputs in zip(groups, (context, torch.cat([groups[0], context])), strict=True):
            # output rows by part: all widths, all heights, all derivatives (zuko's are by
            # feature), so that each part is a block of long contiguous runs
            rows = torch.cat([(g[:, None] * total + part).flatten() for part in parts])
            layers = list(transform.hyper)
            layers[0] = _MaskedOnce(layers[0], cols=inputs)
            layers[-1] = _MaskedOnce(layers[-1], rows=rows)
            layers[1:-1] = [_MaskedOnce(m) if isinstance(m, zuko.nn.MaskedLinear) else m
                            for m in layers[1:-1]]
            self.passes.append(nn.Sequential(*layers))
        register_buffers(self, {"first": groups[0].numpy(), "second": groups[1].numpy(),
                                "order": torch.argsort(torch.cat(groups)).numpy()})

    def _pass(self, i: int, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d, k = y.shape[-1], self.bins
        phi = self.passes[i](inputs).split([d * k, d * k, d * (k - 1)], -1)
        # reshape, not unflatten(-1, (d, -1)): the ONNX export of that fixes the batch size
        return Spline(*(p.reshape(-1, d, n) for p, n in zip(phi, (k, k, k - 1),
                                                           strict=True))).inv(y)

    def forward(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        first = self._pass(0, c, y[:, self.first])
        second = self._pass(1, torch.cat([first, c], -1), y[:, self.second])
        return torch.cat([first, second], -1)[:, self.order]


class FlowInverse(nn.Module):
    """x from base noise z and context c for a LayerFlow (zuko MAF of two-pass spline
    transforms), as generation runs it (see _TwoPassInverse); parameters are the flow's own."""

    def __init__(self, maf):
        super().__init__()
        self.steps = nn.ModuleList(_TwoPassInverse(t) for t in maf.transform.transforms[::-1])

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            z = step(z, c)
        return z


class LayerFlow(nn.Module):
    """p(layer-level vector (n, 2L + 2 [+ X]) | context (n, C)) as a spline coupling flow
    (zuko's NSF with the faster ``Spline``)."""

    def __init__(self, features: int, context: int, cfg: FlowGNNConfig):
        super().__init__()
        bins = cfg.flow_bins
        self.flow = zuko.flows.MAF(features, context, univariate=Spline,
                                   shapes=[(bins,), (bins,), (bins - 1,)],
                                   transforms=cfg.flow_transforms, passes=2, randperm=True,
                                   hidden_features=[cfg.flow_hidden] * 2)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.flow(c).log_prob(x)

    def sample(self, c: torch.Tensor) -> torch.Tensor:
        return self.flow(c).sample()


def register_buffers(module: nn.Module, buffers: dict) -> None:
    """Register numpy values as buffers: bool, int64 or float32 tensors."""
    for name, value in buffers.items():
        value = np.asarray(value)
        dtype = (torch.bool if value.dtype == bool else torch.int64
                 if np.issubdtype(value.dtype, np.integer) else torch.float32)
        module.register_buffer(name, torch.as_tensor(value, dtype=dtype))


class LayerLevel(nn.Module):
    """Stage 1 as a tensor program: conditions and flow noise -> (context (P, C), layer
    energies E_l (P, L) MeV, hit counts N_l (P, L), transverse centre (P, 2) mm, the
    generator's extra shower-level features (P, X), unscaled; X = 0 for FlowGNN). ``model``
    has ``flow`` (LayerFlow), ``norms``, ``particles`` and ``layer_sizes`` (cells per layer);
    its flow is shared, not copied. Every value is clipped to the training sample's range
    (+5 %), and a shower's visible energy to the largest fraction of its incident energy that
    training showers of similar energy had (+5 %; data.response_bound): the flow's tails drew
    0.5 % of 50 GeV pions with up to 3.3x Geant4's largest (files from before session 12 have
    no such bound)."""

    def __init__(self, model):
        super().__init__()
        self.inverse = FlowInverse(model.flow.flow)
        n = model.norms
        lo, hi = np.asarray(n["flow_min"]), np.asarray(n["flow_max"])
        bound = n.get("response_bound", {})
        self.n_layers = len(model.layer_sizes)
        self.flow_dim = len(n["flow_mean"])
        register_buffers(self, {
            "sizes": model.layer_sizes,
            "context_mean": n["context_mean"], "context_std": n["context_std"],
            "flow_mean": n["flow_mean"], "flow_std": n["flow_std"],
            "flow_lo": lo - 0.05 * (hi - lo), "flow_hi": hi + 0.05 * (hi - lo),
            "onehot": np.eye(len(model.particles)),
            "bound_edges": bound.get("log_e_edges", [0.0]),
            "response_max": 1.05 * np.exp(bound.get("log_response_max", [np.inf, np.inf]))})

    def forward(self, energy, direction, particle, z):
        dx, dy, dz = direction.unbind(-1)
        theta = torch.atan2(torch.sqrt(dx * dx + dy * dy), dz).clamp(THETA_MIN,
                                                                      math.pi - THETA_MIN)
        eta = -torch.log(torch.tan(0.5 * theta))
        # phi 0 along z, as numpy's arctan2(0, 0) (ONNX's atan2 of 0 / 0 is NaN)
        phi = torch.where(dx * dx + dy * dy > 0, torch.atan2(dy, dx), torch.zeros_like(dx))
        num = torch.stack([torch.log(energy), eta, phi], -1)
        num = (num - self.context_mean) / self.context_std
        ctx = torch.cat([num, self.onehot[particle]], -1)
        x = self.inverse(z, ctx) * self.flow_std + self.flow_mean
        x = torch.minimum(torch.maximum(x, self.flow_lo), self.flow_hi)
        n_l = self.n_layers
        hits = torch.floor(torch.exp(x[:, n_l:2 * n_l].clamp(0, 12)) - 1.0)
        hits = torch.minimum(hits, self.sizes.float())
        e_layer = torch.exp(x[:, :n_l].clamp(-30, 2)) * energy[:, None]
        e_layer = torch.where(hits > 0, e_layer, torch.zeros_like(e_layer))
        which = (torch.log(energy)[:, None] >= self.bound_edges[None, :]).sum(1)
        cap = self.response_max[which] * energy / e_layer.sum(1).clamp(min=1e-12)
        e_layer = e_layer * cap.clamp(max=1.0)[:, None]
        return ctx, e_layer, hits, x[:, 2 * n_l:2 * n_l + 2] * CENTRE_SCALE, x[:, 2 * n_l + 2:]


def pair_features(e_layer: torch.Tensor, hits: torch.Tensor, depth: torch.Tensor,
                  mean_depth: torch.Tensor) -> torch.Tensor:
    """(..., 5) features of (shower, layer) pairs from broadcastable tensors: the layer energy
    (MeV) and hit count, the layer's depth and the shower's mean depth (X0)."""
    return torch.stack([
        torch.log(e_layer.clamp(min=1e-3)) / 5.0, torch.log1p(hits) / 5.0,
        torch.log((e_layer / hits.clamp(min=1)).clamp(min=1e-3)),
        depth / 10.0, (depth - mean_depth) / 5.0], -1)


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
