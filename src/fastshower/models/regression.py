"""Energy regression from the graph of a shower's hits (the seed project's testbed of graph
architectures) and its baselines.

- ``EnergyGNN``: 3 message-passing layers (GCNConv by default; EdgeConv or GravNetConv behind
  the ``conv`` key), batch normalisation after the first two, then 2 fully connected layers
  per hit giving its calibration weight; the energy is the weighted sum of the hit energies
  (a learned, local version of the calibrated sum). Optionally the high-level variables go
  beside every hit's features into the fully connected layers.
  (GravNet is a MessagePassing layer of this module: PyG's needs pyg-lib.)
  It predicts ln(E / GeV); the loss is the mean relative error mean |1 - E_pred / E_true|.
- ``linear_fit``: E = a * E_EM + b * E_HAD, least squares on the training split (a calibrated
  energy sum per section).
- ``HighLevelDNN``: a small MLP on the high-level variables alone.

High-level variables (per shower, from the hits above threshold): energy sums of the
electromagnetic section (the geometry's first section: CE-E, ECAL) and of the rest (CE-H,
HCAL), in GeV, and the energy-weighted pseudorapidity and azimuth of the hits.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch_geometric.nn import EdgeConv, GCNConv, MessagePassing, global_add_pool

from fastshower.geometry import Geometry

HIGH_LEVEL = ("e_em_gev", "e_had_gev", "eta_w", "phi_w")


class RegressionConfig(BaseModel):
    """Architecture and training of the energy regression (saved in the run folder)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    conv: str = Field("gcn", pattern="^(gcn|edge|gravnet)$")
    hidden: int = Field(64, gt=0)
    high_level: bool = False
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)
    max_epochs: int = Field(60, gt=0)
    patience: int = Field(8, gt=0)
    seed: int = Field(0, ge=0)


def em_layers(geom: Geometry) -> np.ndarray:
    """(L,) True for layers of the electromagnetic (first) section."""
    first = geom.layers[0].section
    return np.array([lay.section == first for lay in geom.layers])


def high_level(x_raw: torch.Tensor, batch: torch.Tensor, n: int, em: np.ndarray) -> torch.Tensor:
    """(n, 4) high-level variables from raw node features (energy MeV, x, y, z, layer, ...)."""
    e, x, y, z, layer = x_raw[:, 0], x_raw[:, 1], x_raw[:, 2], x_raw[:, 3], x_raw[:, 4].long()
    is_em = torch.from_numpy(em)[layer]
    e_em = torch.zeros(n).index_add_(0, batch, torch.where(is_em, e, 0.0)) / 1e3
    e_had = torch.zeros(n).index_add_(0, batch, torch.where(is_em, 0.0, e)) / 1e3
    r = torch.sqrt(x * x + y * y)
    eta = torch.asinh(z / r.clamp(min=1e-3))
    phi = torch.atan2(y, x)
    total = torch.zeros(n).index_add_(0, batch, e).clamp(min=1e-9)
    eta_w = torch.zeros(n).index_add_(0, batch, e * eta) / total
    phi_w = torch.zeros(n).index_add_(0, batch, e * phi) / total
    return torch.stack([e_em, e_had, eta_w, phi_w], -1)


def knn_edges(pos: torch.Tensor, batch: torch.Tensor, k: int) -> torch.Tensor:
    """(2, E) edges j -> i to the k nearest other nodes of the same graph in ``pos``."""
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    src, dst = [], []
    for lo, n in zip(starts.tolist(), counts.tolist(), strict=True):  # a loop over graphs
        kk = min(k, n - 1)
        if kk <= 0:
            continue
        d = torch.cdist(pos[lo:lo + n], pos[lo:lo + n])
        d.fill_diagonal_(float("inf"))
        nearest = d.topk(kk, largest=False).indices
        src.append(nearest.reshape(-1) + lo)
        dst.append(torch.arange(n).repeat_interleave(kk) + lo)
    if not src:
        return torch.zeros(2, 0, dtype=torch.long)
    return torch.stack([torch.cat(src), torch.cat(dst)])


class GravNetLayer(MessagePassing):
    """GravNet (Qasim et al., 2019): nodes find their k nearest neighbours in a learned space
    and gather learned features weighted by exp(-10 d^2), mean- and max-aggregated. Written
    here because PyG's GravNetConv needs pyg-lib, which has no build for this torch."""

    def __init__(self, a: int, b: int, space: int = 4, k: int = 8):
        super().__init__(aggr=["mean", "max"])
        self.k = k
        self.lin_s, self.lin_h = nn.Linear(a, space), nn.Linear(a, b // 2)
        self.lin_out = nn.Linear(a + 2 * (b // 2), b)

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        s, h = self.lin_s(x), self.lin_h(x)
        edge_index = knn_edges(s.detach(), batch, self.k)
        weight = torch.exp(-10.0 * (s[edge_index[0]] - s[edge_index[1]]).pow(2).sum(-1))
        gathered = self.propagate(edge_index, h=h, weight=weight, size=(len(x), len(x)))
        return self.lin_out(torch.cat([x, gathered], -1))

    def message(self, h_j: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h_j * weight[:, None]


class EnergyGNN(nn.Module):
    """E = sum_i w_i e_i over the hits, w_i = exp(FC(FC(graph features of hit i [, HL])))."""

    def __init__(self, node_features: int, cfg: RegressionConfig, hl_mean=None, hl_std=None,
                 log_scale: float = 0.0):
        super().__init__()
        h, self.cfg = cfg.hidden, cfg
        dims = [node_features, h, h, h]
        self.convs = nn.ModuleList(self._conv(a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                    strict=True))
        self.norms = nn.ModuleList([nn.BatchNorm1d(h), nn.BatchNorm1d(h)])
        n_hl = len(HIGH_LEVEL) if cfg.high_level else 0
        self.head = nn.Sequential(nn.Linear(h + n_hl, h), nn.ReLU(), nn.Linear(h, 1))
        nn.init.zeros_(self.head[-1].weight)  # start as the calibrated sum: one weight for all
        nn.init.constant_(self.head[-1].bias, log_scale)
        self.register_buffer("hl_mean", torch.zeros(4) if hl_mean is None else hl_mean)
        self.register_buffer("hl_std", torch.ones(4) if hl_std is None else hl_std)

    def _conv(self, a: int, b: int) -> nn.Module:
        if self.cfg.conv == "gcn":
            return GCNConv(a, b)
        if self.cfg.conv == "edge":
            return EdgeConv(nn.Sequential(nn.Linear(2 * a, b), nn.ReLU(), nn.Linear(b, b)))
        return GravNetLayer(a, b)

    def forward(self, x, edge_index, batch, n: int, e_hit: torch.Tensor,
                hl: torch.Tensor | None = None):
        """ln(E / GeV) per graph; ``e_hit``: the hits' energies in MeV."""
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h, batch) if self.cfg.conv == "gravnet" else conv(h, edge_index)
            h = torch.relu(h)
            if i < 2:
                h = self.norms[i](h)
        if self.cfg.high_level:
            h = torch.cat([h, ((hl - self.hl_mean) / self.hl_std)[batch]], -1)
        weighted = torch.exp(self.head(h).squeeze(-1)) * e_hit / 1e3
        return torch.log(global_add_pool(weighted, batch, n).clamp(min=1e-9))


class HighLevelDNN(nn.Module):
    """ln(E / GeV) from the standardised high-level variables alone."""

    def __init__(self, hl_mean: torch.Tensor, hl_std: torch.Tensor, hidden: int = 64,
                 log_e_mean: float = 0.0):
        super().__init__()
        self.register_buffer("hl_mean", hl_mean)
        self.register_buffer("hl_std", hl_std)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.net[-1].bias, log_e_mean)  # start at the typical energy

    def forward(self, hl: torch.Tensor) -> torch.Tensor:
        return self.net((hl - self.hl_mean) / self.hl_std).squeeze(-1)


def relative_error(log_pred: torch.Tensor, e_true: torch.Tensor) -> torch.Tensor:
    """The training loss: mean |1 - E_pred / E_true|."""
    return (1 - torch.exp(log_pred) / e_true).abs().mean()


def linear_fit(hl: np.ndarray, e_true: np.ndarray) -> np.ndarray:
    """(a, b) of E = a E_EM + b E_HAD by least squares."""
    coef, *_ = np.linalg.lstsq(hl[:, :2], e_true, rcond=None)
    return coef

