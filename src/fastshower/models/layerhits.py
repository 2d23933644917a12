"""LayerHits: a generator whose work follows the hits, not the cells (issue 17, first version).

Stage 1 is FlowGNN's layer-level spline flow: per layer the energy and the number of hits, and
the shower's transverse centre. Stage 2 places each layer's N hits directly. A small network
turns the layer-level quantities into a mixture of K Gaussians in u = ln(r + 1 mm), r being the
distance from the shower axis (shifted by the centre) in the layer plane; about 2N candidate
points are drawn from it at uniform azimuth and put on cells by the geometry lookup, and a
third network, trained on exactly these proposals, gives each proposed cell the log-odds of
being a hit: the N hits are the Gumbel-top-N of those (proposal plus learned acceptance, which
corrects what the proposal alone gets wrong: distinct cells are not independent draws). A second
network gives each hit's ln(e / mean hit energy) as a
Gaussian from its cell's u and the layer quantities; the energies are rescaled to the layer
energy. Work per shower: one radial-network call per active layer, ~2N lookups and N
acceptance- and energy-network calls per layer.

Approximations, named: the hits of a layer are azimuthally symmetric around the shifted axis;
a cell that no proposal reaches cannot be a hit; the Gumbel-top-N of independent log-odds
stands for the joint law of the hit set (a layer whose proposals give fewer than N cells keeps
fewer); hit times are times of flight; no ONNX export yet.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_points, centroid_depth, depth_x0
from fastshower.models.base import ShowerGenerator, TrainingRanges, primaries_inputs
from fastshower.models.flowgnn.data import TrainingData, fit_norms
from fastshower.models.flowgnn.network import LayerFlow, LayerLevel
from fastshower.models.showers import PARTICLE_OF_PDG, THRESHOLD_MIP, particle_index, to_batch
from fastshower.simhits import Primaries, ShowerBatch

R0_MM = 1.0  # u = ln(r + R0): regular at the axis


class LayerHitsConfig(BaseModel):
    """Sizes of the two stages and the mini-batch of a training step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    flow_transforms: int = Field(4, gt=0)
    flow_hidden: int = Field(64, gt=0)
    flow_bins: int = Field(8, gt=1)
    hidden: int = Field(64, gt=0)
    components: int = Field(4, gt=0)
    oversample: float = Field(2.0, ge=1.0)  # candidate points per hit
    flow_batch: int = Field(256, gt=0)  # showers per step for the flow
    hit_pairs: int = Field(128, gt=0)  # (shower, layer) pairs per step for the hit networks


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                         nn.SiLU(), nn.Linear(hidden, n_out))


class HitNet(nn.Module):
    """Per (shower, layer) pair features (n, F) -> radial mixture (logits, means, log sigmas
    (n, K) each); per hit (features, u) -> (mu, log sigma) of ln(e / mean hit energy)."""

    def __init__(self, features: int, cfg: LayerHitsConfig):
        super().__init__()
        self.k = cfg.components
        self.radial = _mlp(features, 3 * cfg.components, cfg.hidden)
        self.energy = _mlp(features + 1, 2, cfg.hidden)
        self.accept = _mlp(features + 2, 1, cfg.hidden)

    def mixture(self, f: torch.Tensor):
        logits, mean, log_sigma = self.radial(f).split(self.k, -1)
        return logits.log_softmax(-1), mean + 2.0, log_sigma.clamp(-4, 2)

    def radius_log_prob(self, f: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """ln p(u) of each hit (n,) under its pair's mixture (f: (n, F), one row per hit)."""
        log_w, mean, log_sigma = self.mixture(f)
        z = (u[:, None] - mean) / log_sigma.exp()
        return torch.logsumexp(log_w - 0.5 * z * z - log_sigma - 0.9189385, -1)

    def accept_logit(self, f: torch.Tensor, u: torch.Tensor, draws: torch.Tensor):
        """Log-odds that a proposed cell (its u, log of the draws that fell in it) is a hit."""
        return self.accept(torch.cat([f, u[:, None], draws[:, None]], -1))[:, 0]

    def energy_params(self, f: torch.Tensor, u: torch.Tensor):
        mu, log_sigma = self.energy(torch.cat([f, u[:, None]], -1)).unbind(-1)
        return mu, log_sigma.clamp(-4, 2)


def propose(mixture, n: np.ndarray, axis: np.ndarray, layer: np.ndarray, geom: Geometry,
            oversample: float, rng: np.random.Generator):
    """Candidate cells of (shower, layer) pairs: ceil(oversample n) + 8 points per pair drawn
    from its radial mixture (ln weights, means, ln sigmas (P, K) in u) at uniform azimuth around
    its axis point ``axis`` (P, 2) mm, put on cells. Returns distinct (pair, cell, u of the cell
    centre, ln of the number of points in the cell), pairs in order."""
    log_w, mean, log_sigma = mixture
    m = np.ceil(oversample * n).astype(np.int64) + 8
    pair = np.repeat(np.arange(len(n)), m)
    comp = np.argmax(log_w[pair] + rng.gumbel(size=(len(pair), log_w.shape[1])), -1)
    u = mean[pair, comp] + np.exp(log_sigma[pair, comp]) * rng.standard_normal(len(pair))
    r, phi = np.maximum(np.exp(u) - R0_MM, 0.0), rng.uniform(0, 2 * np.pi, len(pair))
    xy = axis[pair] + np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
    cell = geom.lookup(layer[pair], xy[:, 0], xy[:, 1])
    ok = cell >= 0
    key, draws = np.unique(pair[ok] * geom.n_cells + cell[ok], return_counts=True)
    pair, cell = key // geom.n_cells, key % geom.n_cells
    c = geom.cells
    u_cell = np.log(np.hypot(c["x"][cell] - axis[pair, 0], c["y"][cell] - axis[pair, 1]) + R0_MM)
    return pair, cell, u_cell, np.log(draws)


class HitData(TrainingData):
    """FlowGNN's training data plus every hit's u and ln(e / mean hit energy), grouped by
    (shower, layer) pair."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        super().__init__(batch, geom)
        c = geom.cells
        layer = c["layer"][self.hit_id]
        ax = self.axis[self.hit_event, layer] + self.centre[self.hit_event]
        r = np.hypot(c["x"][self.hit_id] - ax[:, 0], c["y"][self.hit_id] - ax[:, 1])
        mean_e = self.e_layer[self.hit_event, layer] / self.n_layer[self.hit_event, layer]
        n_layers = len(geom.layers)
        pair = self.hit_event * n_layers + layer
        order = np.argsort(pair, kind="stable")
        self.hit_pair, self.hit_u = pair[order], np.log(r[order] + R0_MM)
        self.hit_log_e = np.log(self.hit_energy[order] / mean_e[order])
        self.pairs = np.unique(self.hit_pair)
        self.bounds = np.searchsorted(self.hit_pair, np.stack([self.pairs, self.pairs + 1]))
        self.n_layers, self.geom = n_layers, geom


class LayerHits(nn.Module, ShowerGenerator):
    """Stage 1 (layer-level flow) + stage 2 (hit networks); see the module docstring."""

    name = "layerhits"
    training = "steps"
    config_type = LayerHitsConfig
    loss_weights: ClassVar[dict[str, float]] = {"flow_nll": 1.0, "radius_nll": 1.0,
                                                "energy_nll": 1.0, "accept_bce": 1.0}
    stages: ClassVar[dict[str, tuple[str, ...]]] = {
        "flow": ("flow_nll",), "hits": ("radius_nll", "energy_nll", "accept_bce")}

    def __init__(self, geom: Geometry, particles: list[str], cfg: LayerHitsConfig, norms: dict):
        super().__init__()
        self.cfg, self.particles, self.norms, self.geom = cfg, particles, norms, geom
        self.n_layers = len(geom.layers)
        context = 3 + len(particles)
        self.flow = LayerFlow(2 * self.n_layers + 2, context, cfg)
        self.hits = HitNet(5 + context, cfg)
        self.ranges = TrainingRanges.from_dict(norms["ranges"])
        self.layer_sizes = np.bincount(geom.cells["layer"], minlength=self.n_layers)
        self.depth = depth_x0(geom).astype(np.float32)
        self.threshold = 1.02 * THRESHOLD_MIP * geom.mip_energy

    # ---- shared features ---------------------------------------------------------------------
    def pair_features(self, e_l, n_l, layer, mean_depth, ctx) -> torch.Tensor:
        """(n, 5 + C) features of (shower, layer) pairs, as FlowGNN's per-pair features."""
        depth = torch.as_tensor(self.depth)[layer]
        return torch.cat([torch.stack([
            torch.log(e_l.clamp(min=1e-3)) / 5.0, torch.log1p(n_l) / 5.0,
            torch.log((e_l / n_l.clamp(min=1)).clamp(min=1e-3)), depth / 10.0,
            (depth - mean_depth) / 5.0], -1), ctx], -1)

    def context(self, primaries: Primaries) -> torch.Tensor:
        eta, phi = primaries.eta_phi()
        m, s = self.norms["context_mean"], self.norms["context_std"]
        num = (np.stack([np.log(primaries.energy_mev), eta, phi], -1) - m) / s
        onehot = np.eye(len(self.particles))[particle_index(primaries.pdg, self.particles)]
        return torch.from_numpy(np.concatenate([num, onehot], -1).astype(np.float32))

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def training_data(cls, batch: ShowerBatch, geom: Geometry) -> HitData:
        return HitData(batch, geom)

    @classmethod
    def build(cls, data: HitData, geom: Geometry, cfg: LayerHitsConfig, seed: int) -> LayerHits:
        particles = sorted(PARTICLE_OF_PDG[int(p)] for p in np.unique(data.primaries.pdg))
        return cls(geom, particles, cfg, fit_norms(data, particles, seed))

    def forward(self, data: HitData, rng: np.random.Generator, scale: int = 1,
                shard: tuple[int, int] = (0, 1)) -> dict[str, tuple[torch.Tensor, float]]:
        """Loss terms as (sum, count) over this rank's share: the flow's NLL per feature, the
        hits' radial NLL (in u) and their energies' Gaussian NLL."""
        rank, world = shard
        index = rng.choice(len(data), min(self.cfg.flow_batch * scale, len(data)),
                           replace=False)
        x, c = data.flow_batch(self, index, rng)
        x, c = x[rank::world], c[rank::world]
        flow = -self.flow.log_prob(x, c).sum()
        pick = rng.choice(len(data.pairs), min(self.cfg.hit_pairs * scale, len(data.pairs)),
                          replace=False)[rank::world]
        lo, hi = data.bounds[:, pick]
        counts = hi - lo
        hit = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        event, layer = data.pairs[pick] // data.n_layers, data.pairs[pick] % data.n_layers
        f = self.pair_features(
            torch.from_numpy(data.e_layer[event, layer]).float(),
            torch.from_numpy(data.n_layer[event, layer]).float(), torch.from_numpy(layer),
            torch.from_numpy(data.mean_depth[event]).float(),
            self.context(data.primaries.subset(event)))
        f = f.repeat_interleave(torch.from_numpy(counts), 0)
        u = torch.from_numpy(data.hit_u[hit]).float()
        radius = -self.hits.radius_log_prob(f, u).sum()
        mu, log_sigma = self.hits.energy_params(f, u)
        y = torch.from_numpy(data.hit_log_e[hit]).float()
        energy = (log_sigma + 0.5 * ((y - mu) / log_sigma.exp()) ** 2).sum()
        # acceptance: which proposed cells are Geant4 hits (proposals from the current mixture)
        fp = f[torch.from_numpy(np.cumsum(counts) - counts)]  # one row per pair
        with torch.no_grad():
            mixture = [t.numpy().astype(np.float64) for t in self.hits.mixture(fp)]
        axis = data.axis[event, layer] + data.centre[event]
        cand, cell, u_cell, log_draws = propose(mixture, counts, axis, layer, data.geom,
                                                self.cfg.oversample, rng)
        key = event[cand] * data.n_cells + cell
        pos = np.clip(np.searchsorted(data.hit_key, key), 0, len(data.hit_key) - 1)
        label = torch.from_numpy((data.hit_key[pos] == key).astype(np.float32))
        logit = self.hits.accept_logit(fp[torch.from_numpy(cand)],
                                       torch.from_numpy(u_cell).float(),
                                       torch.from_numpy(log_draws).float())
        accept = nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="sum")
        return {"flow_nll": (flow, x.numel()), "radius_nll": (radius, len(hit)),
                "energy_nll": (energy, len(hit)), "accept_bce": (accept, len(cand))}

    # ---- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        self.eval()
        if "_level" not in self.__dict__:  # plain attribute: not a registered submodule
            self.__dict__["_level"] = LayerLevel(self)
        level = self.__dict__["_level"]
        inputs = {k: torch.from_numpy(v) for k, v in
                  primaries_inputs(primaries, self.particles).items()}
        z = rng.standard_normal((len(primaries), level.flow_dim), dtype=np.float32)
        ctx, e_layer, hits, centre = level(inputs["energy"], inputs["direction"],
                                           inputs["particle"], torch.from_numpy(z))
        event, layer = (torch.as_tensor(a) for a in np.nonzero(hits.numpy()))
        mean_depth = centroid_depth(e_layer, torch.as_tensor(self.depth))
        n = hits[event, layer]
        f = self.pair_features(e_layer[event, layer], n, layer, mean_depth[event], ctx[event])
        log_w, mean, log_sigma = (t.numpy().astype(np.float64) for t in self.hits.mixture(f))
        # candidate cells proposed by the radial mixture; the n hits of each pair are the
        # Gumbel-top-n of the acceptance log-odds among them
        n = n.numpy().astype(np.int64)
        ev, lay = event.numpy(), layer.numpy()
        axis = axis_points(primaries, self.geom)[ev, lay] + centre.numpy()[ev]
        pair, cell, u_cell, log_draws = propose((log_w, mean, log_sigma), n, axis, lay,
                                                self.geom, self.cfg.oversample, rng)
        logit = self.hits.accept_logit(f[torch.from_numpy(pair)],
                                       torch.from_numpy(u_cell).float(),
                                       torch.from_numpy(log_draws).float()).numpy()
        # Pareto sampling: inclusion probabilities pi = p x n / sum(p) over the proposals
        # (they reach only part of the cells a shower may hit), selection by logit(pi) plus
        # logistic noise keeps each cell's inclusion close to pi
        log_p = -np.logaddexp(0.0, -logit.astype(np.float64))
        total = np.bincount(pair, np.exp(log_p), len(n))
        log_pi = np.minimum(log_p + np.log(n / np.maximum(total, 1e-12))[pair], -1e-6)
        uniform = rng.uniform(1e-12, 1 - 1e-12, len(pair))
        score = log_pi - np.log(-np.expm1(log_pi)) + np.log(uniform) - np.log1p(-uniform)
        order = np.lexsort((-score, pair))
        start = np.searchsorted(pair[order], np.arange(len(n)))
        keep = np.sort(order[np.arange(len(order)) - start[pair[order]] < n[pair[order]]])
        pair, cell, u_cell = pair[keep], cell[keep], u_cell[keep]
        # energies of the hits, rescaled to the layer energy
        mu, log_sigma = (t.numpy().astype(np.float64) for t in self.hits.energy_params(
            f[torch.from_numpy(pair)], torch.from_numpy(u_cell).float()))
        e = np.exp(mu + np.exp(log_sigma) * rng.standard_normal(len(pair)))
        e_pair = e_layer[event, layer].numpy().astype(np.float64)
        e *= (e_pair / np.maximum(np.bincount(pair, e, len(n)), 1e-12))[pair]
        e = np.maximum(e, self.threshold[cell])
        return to_batch(primaries, self.geom, ev[pair], cell, e)

    # ---- persistence -------------------------------------------------------------------------
    def state(self, stages: dict[str, dict] | None = None) -> dict:
        weights = self.state_dict() if stages is None else {
            f"{stage}.{k}": v for stage, sd in stages.items() for k, v in sd.items()}
        return {"config": self.cfg.model_dump(), "particles": self.particles,
                "norms": self.norms, "state_dict": weights}

    @classmethod
    def from_state(cls, d: dict, geom: Geometry) -> LayerHits:
        model = cls(geom, d["particles"], LayerHitsConfig(**d["config"]), d["norms"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in d["state_dict"].items()})
        return model.eval()
