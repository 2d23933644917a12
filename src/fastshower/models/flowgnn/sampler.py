"""FlowGNN generation as one tensor program: what ``FlowGNN.sample`` runs and what the ONNX
export traces, so the two cannot drift.

Every layer is padded to the largest layer's M cells and the whole detector is one (L, M) slot
grid (an ONNX graph cannot hold a Python loop over layers). Named approximations and costs:
- every (shower, layer) pair is evaluated, also those the flow gives no hits (their output is
  masked), and padded slots cost compute too;
- message passing runs as K gathers over a padded neighbour table (K = the largest in-layer
  degree): the same sum as the sparse product of training, in operators ONNX has;
- everything is float32.
All randomness comes in as inputs (flow noise z, Gumbel noise, normal noise), so the same noise
gives the same showers in PyTorch and in ONNX Runtime.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from fastshower.geometry import Geometry
from fastshower.geometry.showers import centroid_depth, layer_z, line_at
from fastshower.models.base import HIT_OUTPUTS
from fastshower.models.flowgnn.network import (
    OFFSET_SCALE,
    LayerGraphs,
    LayerLevel,
    pair_features,
    register_buffers,
)

PAD_SCORE = -1.0e4  # Gumbel score of padded slots: never among the top N


def top_k_mask(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(..., M) True for the k largest scores of every row (k: (...,), 0 selects none).
    With score = logit + Gumbel noise this draws k cells without replacement, each draw with
    probability proportional to exp(logit) among those left (the Gumbel-top-k trick)."""
    ranked = torch.sort(score, dim=-1, descending=True).values
    kth = ranked.gather(-1, (k.long() - 1).clamp(min=0)[..., None])
    return (score >= kth) & (k[..., None] > 0)


class NeighbourTable(nn.Module):
    """Mean over in-layer neighbours: (S, F) -> (S, F), S = L * M slots.

    One sum, two kernels (as PyG layers have ``message`` and ``message_and_aggregate``): a
    sparse-dense product when run in PyTorch (10x faster here), K gathers over the padded
    neighbour table when traced for ONNX, which has no sparse operators.
    """

    def __init__(self, index: np.ndarray, weight: np.ndarray):
        super().__init__()
        self.register_buffer("index", torch.from_numpy(index))
        self.register_buffer("weight", torch.from_numpy(weight))
        rows = np.repeat(np.arange(len(index)), index.shape[1])
        keep = weight.ravel() > 0
        with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
            warnings.simplefilter("ignore", UserWarning)
            self.adj = torch.sparse_coo_tensor(
                torch.from_numpy(np.stack([rows[keep], index.ravel()[keep]])),
                torch.from_numpy(weight.ravel()[keep]), (len(index), len(index))
            ).coalesce().to_sparse_csr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self.adj @ x
        out = self.weight[:, 0, None] * x[self.index[:, 0]]
        for k in range(1, self.index.shape[1]):
            out = out + self.weight[:, k, None] * x[self.index[:, k]]
        return out


def slot_grid(geom: Geometry, graphs: LayerGraphs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, M) cell id of every slot (-1 = padding), and the padded neighbour table (S, K) with
    its weights (1 / degree; 0 for padding) of the geometry's in-layer graph."""
    sizes = graphs.size(np.arange(graphs.n_layers))
    m = int(sizes.max())
    j = np.arange(m)[None, :]
    cell = np.where(j < sizes[:, None], graphs.start[:-1, None] + j, -1)
    slot_of_cell = np.flatnonzero(cell.ravel() >= 0)  # cells are contiguous by layer
    layer = geom.cells["layer"]
    src, dst = geom.edges.astype(np.int64)
    same = layer[src] == layer[dst]
    dst, src = slot_of_cell[dst[same]], slot_of_cell[src[same]]
    order = np.argsort(dst, kind="stable")
    dst, src = dst[order], src[order]
    deg = np.bincount(dst, minlength=cell.size)
    k = int(deg.max())
    rank = np.arange(len(dst)) - np.repeat(np.cumsum(deg) - deg, deg)[: len(dst)]
    index = np.zeros((cell.size, k), np.int64)
    weight = np.zeros((cell.size, k), np.float32)
    index[dst, rank] = src
    weight[dst, rank] = 1.0 / deg[dst]
    return cell, index, weight


class FlowGNNSampler(nn.Module):
    """(energy MeV (P,), position mm (P, 3), unit direction (P, 3), particle index (P,),
    flow noise (P, D), Gumbel noise (P, L, M), normal noise (P, L, M)) -> hits as
    (shower index, cell id, energy MeV), one entry per hit."""

    def __init__(self, model):
        """``model``: a FlowGNN (its networks are shared, not copied)."""
        super().__init__()
        self.flow, self.cells = model.flow.flow, model.cells
        cell, index, weight = slot_grid(model.geom, model.graphs)
        self.n_layers, self.width = cell.shape
        self.table = NeighbourTable(index, weight)
        c, safe = model.geom.cells, np.maximum(cell, 0)
        self.level = LayerLevel(model)
        buffers = {
            "cell": cell, "valid": cell >= 0,
            "cell_x": c["x"][safe], "cell_y": c["y"][safe],
            "static": model.graphs.static[safe],
            "threshold": 1.02 * model.graphs.threshold[safe],
            "layer_z": layer_z(model.geom), "depth": model.depth,
        }
        register_buffers(self, buffers)
        self.flow_dim = self.level.flow_dim
        grid = (int(self.n_layers), int(self.width))
        self.noise = {"z": ("normal", (self.flow_dim,)), "gumbel": ("gumbel", grid),
                      "normal": ("normal", grid)}
        self.output_names = HIT_OUTPUTS

    def node_features(self, position, direction, ctx, e_layer, hits, centre) -> torch.Tensor:
        """(S, P, F) cell features, in FlowGNN.group_inputs' order."""
        p = e_layer.shape[0]
        ax, ay = line_at(self.layer_z[None, :], *position[:, :, None].unbind(1),
                         *direction[:, :, None].unbind(1))  # (P, L)
        ax, ay = ax + centre[:, 0:1], ay + centre[:, 1:2]
        dx = (self.cell_x[None] - ax[..., None]) / OFFSET_SCALE  # (P, L, M)
        dy = (self.cell_y[None] - ay[..., None]) / OFFSET_SCALE
        r = torch.sqrt(dx * dx + dy * dy)
        mean_depth = centroid_depth(e_layer, self.depth)
        depth = self.depth[None].expand(p, -1)
        per_pair = pair_features(e_layer, hits, depth, mean_depth[:, None])  # (P, L, 5)
        per_pair = torch.cat([per_pair, ctx[:, None].expand(-1, self.n_layers, -1)], -1)
        shape = (p, self.n_layers, self.width)
        x = torch.cat([torch.stack([dx, dy, r, torch.log(r + 0.05)], -1),
                       self.static[None].expand(*shape, -1),
                       per_pair[:, :, None].expand(*shape, -1)], -1)  # (P, L, M, F)
        return x.reshape(p, -1, x.shape[-1]).transpose(0, 1).contiguous()

    def cell_net(self, x: torch.Tensor) -> torch.Tensor:
        """CellNet with the neighbour table: (S, P, F) -> (S, P, 3)."""
        net = self.cells
        h = net.embed(x)
        s, p, hidden = h.shape
        for conv in net.convs:
            mean = self.table(h.reshape(s, p * hidden)).reshape(s, p, hidden)
            h = h + torch.nn.functional.silu(conv.lin_rel(mean) + conv.lin_root(h))
        return net.head(h)

    def forward(self, energy, position, direction, particle, z, gumbel, normal):
        ctx, e_layer, hits, centre, _ = self.level(energy, direction, particle, z)
        x = self.node_features(position, direction, ctx, e_layer, hits, centre)
        out = self.cell_net(x).transpose(0, 1).reshape(-1, self.n_layers, self.width, 3)
        score = torch.where(self.valid, out[..., 0] + gumbel, torch.full_like(gumbel, PAD_SCORE))
        hit = top_k_mask(score, hits) & self.valid
        e = torch.exp(out[..., 1] + torch.exp(out[..., 2].clamp(-4, 2)) * normal)
        e = torch.where(hit, e, torch.zeros_like(e))
        e = e * (e_layer / e.sum(-1).clamp(min=1e-12))[..., None]
        e = torch.where(hit, torch.maximum(e, self.threshold), torch.zeros_like(e))
        shower, layer, slot = torch.nonzero(hit, as_tuple=True)
        return shower, self.cell[layer, slot], e[shower, layer, slot]

