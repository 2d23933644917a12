"""LayerHits: a generator whose work follows the hits, not the cells (issue 17).

Stage 1 is FlowGNN's layer-level spline flow: per layer the energy and the number of hits, and
the shower's transverse centre, here the shift of its core (``core_shift``: the centroid of the
energy within ``AXIS_MM`` of the axis, less the lattice's part; the placement makes the
asymmetry of the rest and the lattice's part itself: with the centroid of all the energy they
would be counted twice, measured: centre spread 0.93 vs 0.65 mm above 100 GeV). Stage 2 places
each layer's N hits directly. A small network turns the layer-level quantities into a mixture of
K Gaussians in u = ln(r + 1 mm), r being the distance from the shower axis (shifted by the
centre) in the layer plane. The cell under the axis point is a hit with a learned probability
(``central_hit``; always, in earlier models). The dense core (cells whose centre lies within the
pair's core radius: where a cell expects at least ``core_hits_per_cell`` hits, at most
``core_mm``) is placed cell by cell, from a precomputed stencil of the cell under the axis
point: each is a hit with probability N x density x area, scaled so that the expected count is
N x P(r < core radius). The sparse tail takes the remaining hits as points drawn from the mixture
beyond the core radius, put on cells by the geometry lookup (distinct cells in draw order). A
second network gives each hit's ln(e / mean hit energy) as a mixture of Gaussians from its
cell's u, whether it is the cell under the axis, and the layer quantities; energies are rescaled
to the layer energy. Work per shower: one radial-network call per active layer, its core cells
(one at low energy, a few dozen in a dense layer), ~1.3 lookups per tail hit, one small
energy-network call per hit.

Azimuths around the shifted axis follow p(phi) = (1 + 2 a cos phi) / 2 pi from the primary's
transverse direction, a learned per pair and radius (``anisotropy``); the energy network sees
each hit's cos phi too.

With ``lateral_groups`` the flow also draws shower-level lateral latents: for groups of
consecutive layers the mean u of their hits and the mean unit vector of the azimuths of their
hits beyond AXIS_MM. The hit networks see their group's, azimuths are measured from its
vector's direction (training: the vector of the other hits of the group, leave one out) and the
energy network sees cos from both that direction and the primary's. A layer's hits then move
with the shower's own width and lopsidedness, as sub-showers make them (pions: docs/models.md).
With ``core_share`` the flow also draws each group's share of its energy within SHARE_MM of
the shifted axis, and the placement imposes it (impose_shares): a pion's core share is set by
its pi0 content, a shower-level quantity that independent hit energies cannot follow.

Approximations, named: the azimuth law has one harmonic; a core cell's probability uses the
density at its centre (its radius floored at half the cell size); core cells are included
independently (then at most N kept); tail points that land on a taken cell are redrawn, which
thins the tail just beyond the core slightly; no core when the axis point falls outside every
cell; hit times are times of flight; the core share is imposed by one factor on the core
hits' energies per layer group, capped (SHARE_SHIFT).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from scipy import special
from scipy.spatial import cKDTree
from torch import nn

from fastshower.geometry import Geometry
from fastshower.geometry.showers import centroid_depth, layer_z, line_at
from fastshower.models.flowgnn import LayerFlowGenerator
from fastshower.models.flowgnn.data import TrainingData
from fastshower.models.flowgnn.network import (
    LayerFlowConfig,
    LayerLevel,
    pair_features,
    register_buffers,
)
from fastshower.models.showers import THRESHOLD_MIP, shower_centre, to_batch
from fastshower.simhits import Primaries, ShowerBatch

R0_MM = 1.0  # u = ln(r + R0): regular at the axis
DIPOLE_NOISE = 0.05  # dequantises the lateral azimuth vectors (of one hit: on the circle)
AXIS_MM = 15.0  # mm: the core whose shift is the flow's centre (core_shift)
SHARE_MM = 20.0  # mm: the radius of the core energy share (validation's core fraction's)
SHARE_FLOOR = 0.01  # share latent: logit((s + floor) / (1 + 2 floor)), finite at s = 0 and 1
SHARE_SHIFT = 4.0  # the largest shift of a group's core log-odds that impose_shares makes
WIDE_CORE = 4.0  # core radii of at least this many circumradii: tail drawn from inside it
HOST_BLOCK = 128  # showers placed together by the host step


class LayerHitsConfig(LayerFlowConfig):
    """The flow plus the hit networks and their (shower, layer) pairs per step."""

    hidden: int = Field(64, gt=0)
    components: int = Field(4, gt=0)
    energy_hidden: int = Field(32, gt=0)  # the per-hit energy network's width
    energy_components: int = Field(3, gt=0)  # Gaussians in ln(e / mean hit energy)
    core_mm: float = Field(40.0, gt=0)  # largest radius of the core placed cell by cell
    core_hits_per_cell: float = Field(0.1, gt=0)  # the core ends where cells expect fewer hits
    hit_pairs: int = Field(128, gt=0)  # (shower, layer) pairs per step for the hit networks
    # learn the probability that the cell under the axis point is a hit (Geant4: 0.36-0.71 in
    # layers of 1-4 hits, ~1 beyond 16); False: always a hit (the runs before session 7)
    central_hit: bool = False
    # the hit networks also see the shower's response ln(E_vis / E) (standardised): a hadron
    # shower that responds more is richer in pi0s, so narrower (issue 20)
    shower_response: bool = False
    # what picks the flow's weights: its validation NLL, or the FPD of the validation showers
    # (on pions the NLL rose after 500 steps while the showers kept improving: docs/models.md)
    flow_selection: Literal["nll", "fpd"] = "nll"
    # shower-level lateral latents, drawn by the flow with the layer quantities (0: none): for
    # G groups of consecutive layers, the mean u of their hits and the mean unit vector of the
    # azimuths of their hits beyond AXIS_MM; the hit networks see their group's, and azimuths
    # are measured from its direction. Without them every layer's hits are drawn independently
    # given the layer quantities: showers came out alike laterally (pions at 50 GeV: the spread
    # of the width 15.4 vs 21.5 mm, of the centre 7 vs 11 mm; docs/models.md)
    lateral_groups: int = Field(0, ge=0)
    # with the lateral latents, the flow also draws each group's share of its energy within
    # SHARE_MM of the shifted axis, which the placement then imposes on the hits' energies
    # (impose_shares). Without it the hits' energies are drawn independently given the layer
    # quantities and the share's spread came out too small (pions at 50 GeV: the spread of the
    # core fraction 0.096 vs 0.135 in Geant4, with it 0.120; held-out AUC 0.765 -> 0.632-0.676;
    # docs/models.md)
    core_share: bool = False

    @model_validator(mode="after")
    def _share_needs_groups(self) -> LayerHitsConfig:
        if self.core_share and not self.lateral_groups:
            raise ValueError("core_share needs lateral_groups > 0 (its layer groups)")
        return self


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                         nn.SiLU(), nn.Linear(hidden, n_out))


class HitNet(nn.Module):
    """Per (shower, layer) pair features (n, F + lateral) -> radial mixture (logits, means, log
    sigmas (n, K) each); per hit (its pair's first F features and hit_inputs) -> a mixture of
    Gaussians in ln(e / mean hit energy). The energy network's first layer is split so that the
    pair's share is computed once per pair. It does not see the ``lateral`` last features (the
    lateral latents' terms): taking them away (with the leave-one-out frames, one change of
    two) left its validation NLL as it was (pions, the same validation pairs: 1.0420 vs 1.0418
    at step 1,250)."""

    def __init__(self, features: int, cfg: LayerHitsConfig, lateral: int = 0):
        super().__init__()
        self.k, self.central, self.features = cfg.components, cfg.central_hit, features
        self.radial = _mlp(features + lateral, 3 * cfg.components + 2 + int(cfg.central_hit),
                           cfg.hidden)
        self.energy_pair = nn.Linear(features, cfg.energy_hidden)
        self.energy_hit, self.energy = energy_layers(cfg.energy_hidden, cfg.energy_components,
                                                     energy_inputs(cfg))

    def mixture(self, f: torch.Tensor):
        """(log weights, means, log sigmas) of the radial mixture in u, the tilt (n, 2) of
        the azimuth law (see anisotropy) and, with ``central_hit``, the logit (n, 1) of the
        probability that the cell under the axis point is a hit."""
        out = self.radial(f)
        logits, mean, log_sigma, tilt = out[..., :3 * self.k + 2].split([self.k] * 3 + [2], -1)
        return (logits.log_softmax(-1), mean + 2.0, log_sigma.clamp(-4, 2), tilt,
                *((out[..., -1:],) if self.central else ()))

    def energy_mixture(self, f: torch.Tensor, pair: torch.Tensor, x: torch.Tensor):
        """The mixture of each hit (pair: its row of the pair features f; x: hit_inputs)."""
        return energy_mixture(energy_out(self.energy_hit, self.energy, self.pair_share(f)[pair],
                                         x))

    def pair_share(self, f: torch.Tensor) -> torch.Tensor:
        """(..., H) the pairs' share of the energy network's first layer."""
        return self.energy_pair(f[..., :self.features])


def energy_inputs(cfg: LayerHitsConfig) -> int:
    """The per-hit inputs of the energy network (hit_inputs): 3, or 4 with lateral latents."""
    return 4 if cfg.lateral_groups else 3


def hit_inputs(u, central, cos, cos_ahead=None) -> torch.Tensor:
    """(n, 3 | 4) per-hit inputs of the energy network: u, whether the cell is the one under the
    axis point, cos of the azimuth in the pair's frame and, where that frame is the lateral
    latents' (not the primary's transverse direction), cos from the primary's direction too:
    hits ahead carry more energy (ln e +0.06 vs -0.08 behind, pions), which the centre's
    offset follows (measured: without it the 100-500 GeV pions' centre came out 1.2 mm ahead
    vs Geant4's 7.3 mm)."""
    cols = [u, central, cos, *(() if cos_ahead is None else (cos_ahead,))]
    return torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in cols], -1)


def energy_layers(width: int, components: int,
                  inputs: int = 3) -> tuple[nn.Linear, nn.Sequential]:
    """The per-hit layers of the energy network: the hit's share of the first layer (from
    hit_inputs) and the rest; LayerHits trains them, its host step rebuilds them."""
    return nn.Linear(inputs, width, bias=False), nn.Sequential(
        nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 3 * components))


def energy_out(hit: nn.Linear, layers: nn.Sequential, h_pair: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
    """(n, 3M) raw energy-mixture outputs of hits from their pairs' shares h_pair (n, H) and
    their hit_inputs x."""
    return layers(h_pair + hit(x))


def energy_mixture(out: torch.Tensor):
    """(log weights, means, log sigmas) (n, M) each of ln(e / mean hit energy) from energy_out."""
    logits, mean, log_sigma = out.chunk(3, -1)
    return logits.log_softmax(-1), mean, log_sigma.clamp(-4, 2)


def anisotropy(tilt, u):
    """The azimuth law's amplitude a at u: p(phi) = (1 + 2 a cos phi) / 2 pi, phi measured
    from the primary's transverse direction, a = 0.45 tanh(t0 + t1 (u - 3)) (u = 3: 19 mm).
    Showers entering the endcap at an angle spread further ahead than behind (measured: the
    hits beyond 15 mm of the core sit 0.02-0.08 r ahead on average). Works on numpy arrays and
    on tensors."""
    x = tilt[..., 0] + tilt[..., 1] * (u - 3.0)
    return 0.45 * (x.tanh() if isinstance(x, torch.Tensor) else np.tanh(x))


def _azimuths(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """phi (rad, modulo 2 pi) with density (1 + 2 a cos phi) / 2 pi, |a| <= 1/2, drawn exactly:
    a mixture of the uniform law (weight 1 - 2|a|) and the cardioid (1 + cos(phi - phi0)) / 2 pi
    (phi0 = 0 for a > 0, pi for a < 0), whose half angle's sine follows the semicircle law: the
    abscissa of a point uniform in the unit disc."""
    q, v = rng.uniform(size=(2, len(a)))
    w = 2 * np.abs(a)
    cardioid = q < w  # then q / w is uniform on (0, 1): the point's squared radius
    half = np.arcsin(np.sqrt(np.minimum(q / np.maximum(w, 1e-12), 1.0)) * np.cos(2 * np.pi * v))
    return np.where(cardioid, 2 * half + np.where(a < 0, np.pi, 0.0), 2 * np.pi * v)


def _log_prob(mixture, x: torch.Tensor) -> torch.Tensor:
    """ln p(x) (n,) under a Gaussian mixture (log weights, means, log sigmas: (n, K) each)."""
    log_w, mean, log_sigma = mixture
    z = (x[:, None] - mean) / log_sigma.exp()
    return torch.logsumexp(log_w - 0.5 * z * z - log_sigma - 0.9189385, -1)


def _draw(mixture, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a Gaussian mixture given as numpy arrays (n, K) (log weights, up to
    a constant per row; means; log sigmas)."""
    log_w, mean, log_sigma = mixture
    k = _component(np.exp(log_w), rng)
    rows = np.arange(len(k))
    return mean[rows, k] + np.exp(log_sigma[rows, k]) * rng.standard_normal(len(k))


def _component(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One component index per row drawn with weights w (n, K) >= 0 (not necessarily
    normalised), by inverse CDF (0.6 of Gumbel-max's time in the tail draws, line profile of
    10 GeV photons); the CDF by a product with a triangular matrix and the search column by
    column (for K of 3-4, 9 and 5 times faster than numpy's cumsum and a row-wise count)."""
    k = w.shape[1]
    cdf = w @ np.triu(np.ones((k, k)))
    u = rng.uniform(size=len(w)) * cdf[:, -1]
    return sum((cdf[:, j] < u).astype(np.int64) for j in range(k - 1))


def _first_k(group: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Mask of the first k[g] entries of every group g of ``group`` (group ids, ascending)."""
    start = np.searchsorted(group, np.arange(len(k)))
    return np.arange(len(group)) - start[group] < k[group]


def _offsets(geom: Geometry, cell: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, ...]:
    """(dx, dy, r) mm of cell centres from points ``xy`` (n, 2) in their layer planes."""
    c = geom.cells
    dx, dy = c["x"][cell] - xy[:, 0], c["y"][cell] - xy[:, 1]
    return dx, dy, np.hypot(dx, dy)


class Stencil:
    """For every cell, the cells of its layer whose centres lie within ``radius_mm`` plus the
    largest circumradius of its centre, nearest first: with the cell under a point, those within
    r + that cell's circumradius include every cell within r of the point. CSR,
    built once per geometry with k-d trees (about a second); looking rows up is one
    vectorised search and gather."""

    ROW = 1e4  # mm: row i's distances are keyed i * ROW + distance, one sorted array
    built: ClassVar[dict[tuple[str, float], Stencil]] = {}  # by geometry identity and radius

    @classmethod
    def of(cls, geom: Geometry, radius_mm: float) -> Stencil:
        """The stencil of a geometry, built once per process."""
        key = (geom.hash, float(radius_mm))
        if key not in cls.built:
            cls.built[key] = cls(geom, radius_mm)
        return cls.built[key]

    def __init__(self, geom: Geometry, radius_mm: float):
        c = geom.cells
        self.circumradius = np.nanmax(np.hypot(c["corners"][..., 0] - c["x"][:, None],
                                               c["corners"][..., 1] - c["y"][:, None]), -1)
        links = [np.stack([np.arange(geom.n_cells)] * 2, -1)]
        reach = radius_mm + self.circumradius.max()
        for lay in np.unique(c["layer"]):
            ids = np.flatnonzero(c["layer"] == lay)
            tree = cKDTree(np.stack([c["x"][ids], c["y"][ids]], -1))
            ij = ids[tree.query_pairs(reach, output_type="ndarray")]
            links += [ij, ij[:, ::-1]]
        i, j = np.concatenate(links).T
        key = i * self.ROW + np.hypot(c["x"][j] - c["x"][i], c["y"][j] - c["y"][i])
        order = np.argsort(key)
        self.key, self.indices = key[order], j[order].astype(np.int32)
        self.indptr = np.searchsorted(i[order], np.arange(geom.n_cells + 1))

    def rows(self, cells: np.ndarray, radius_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, cell) for the stencil entries of ``cells`` within ``radius_mm`` plus their
        circumradius of their centres (row = index into cells; cells of -1 have none)."""
        lo = np.where(cells >= 0, self.indptr[cells], 0)
        hi = np.searchsorted(self.key, cells * self.ROW + radius_mm + self.circumradius[cells],
                             "right")
        counts = np.where(cells >= 0, hi - lo, 0)
        row = np.repeat(np.arange(len(cells)), counts)
        start = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return row, self.indices[start + np.arange(len(row))].astype(np.int64)


def _hit_density(mixture, n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hits per mm^2 at radius r (mm) of each pair with n hits and the radial mixture in u
    (r: (P,) or (P, G))."""
    log_w, mean, sigma = mixture
    log_w = (log_w - np.log(sigma))[:, None, :]
    r = r.reshape(len(n), -1)
    z = (np.log(r + R0_MM)[..., None] - mean[:, None, :]) / sigma[:, None, :]
    p_u = np.exp(log_w - 0.5 * z * z).sum(-1) / np.sqrt(2 * np.pi)
    return n[:, None] * p_u / (2 * np.pi * r * (r + R0_MM))


def core_radius(mixture, n: np.ndarray, cell_area: np.ndarray, max_mm: float,
                hits_per_cell: float) -> np.ndarray:
    """Radius (mm) out to which a pair's cells (of the area of the cell under its axis point)
    expect at least ``hits_per_cell`` hits: on 12 radii from 3 mm to ``max_mm``, the largest
    (the smallest if none); beyond it points rarely share a cell."""
    grid = np.geomspace(3.0, max_mm, 12)
    radii = np.broadcast_to(grid.astype(mixture[0].dtype), (len(n), 12))
    dense = _hit_density(mixture, n, radii) * cell_area[:, None]
    return grid[np.where(dense >= hits_per_cell, np.arange(12), 0).max(-1)]


def place_hits(mixture, n: np.ndarray, axis: np.ndarray, frame: np.ndarray, layer: np.ndarray,
               geom: Geometry, stencil: Stencil, core_mm: float, rng: np.random.Generator,
               hits_per_cell: float = 0.1, p_central: np.ndarray | None = None):
    """The n hit cells of each (shower, layer) pair from its radial mixture in u: the cell under
    the axis point with probability ``p_central`` (always if None); the rest of the dense core
    (cells whose centre lies within the pair's core radius, at most ``core_mm``, of the axis
    point; see core_radius) by independent inclusion with probability n x density x cell area,
    scaled so that their expected number is n x P(r < core radius); the sparse tail by points
    drawn from the mixture beyond the core radius (beyond one circumradius inside it for wide
    cores), kept on cells whose centres lie beyond it (distinct cells in draw order), for the
    remaining hits. Work per pair: the cells of its core (one at low density) and ~1.3 points
    per tail hit. Azimuths follow the law of ``anisotropy`` (tilt: the mixture's fourth part),
    measured from ``frame`` (P, 2), unit vectors (the program's: the primary's transverse
    direction, or the lateral latents' azimuth vector). Returns (pair,
    cell, u and cos(azimuth) of the cell, central: the cell is the one under the axis point)."""
    log_w, mean, log_sigma, tilt = mixture[:4]
    sigma = np.exp(log_sigma)
    c = geom.cells
    below = geom.lookup(layer, axis[:, 0], axis[:, 1])
    single = tuple(a.astype(np.float32) for a in (log_w, mean, sigma))  # densities: 2x faster
    r_core = core_radius(single, n, c["area"][below], core_mm, hits_per_cell)
    # core: every cell within r_core of the axis point, from the stencil of the cell under it
    pair, cell = stencil.rows(below, r_core)
    dx, dy, r = _offsets(geom, cell, axis[pair])
    near = r <= r_core[pair]
    pair, cell, dx, dy, r = pair[near], cell[near], dx[near], dy[near], r[near]
    central = cell == below[pair]
    r_eff = np.maximum(r, 0.5 * np.sqrt(c["area"][cell] / np.pi))
    u, cos = np.log(r + R0_MM), _cos(dx, dy, r, frame[pair])
    pi = _hit_density([a[pair] for a in single], n[pair], r_eff.astype(np.float32))[:, 0] \
        * c["area"][cell] * (1 + 2 * anisotropy(tilt[pair], u) * cos)
    u_core = np.log(r_core + R0_MM)[:, None]
    inside = (np.exp(log_w) * special.ndtr((u_core - mean) / sigma)).sum(-1)  # P(r < core)
    p_c = np.ones(len(n)) if p_central is None else p_central
    want = np.maximum(n * inside - p_c, 0.0)  # expected hits among the other core cells
    for _ in range(4):  # scale to the expected core count; probabilities stop at 1
        pi = np.minimum(pi, 1.0)
        got = np.bincount(pair[~central], pi[~central], len(n))
        pi = np.where(central, p_c[pair], pi * (want / np.maximum(got, 1e-12))[pair])
    keep = np.flatnonzero(rng.uniform(size=len(pi)) < np.minimum(pi, 1.0))
    over = np.flatnonzero((np.bincount(pair[keep], minlength=len(n)) > n)[pair[keep]])
    if len(over):  # pairs with more core cells than hits keep their n likeliest
        rank = np.where(central[keep[over]], 2.0, pi[keep[over]])  # the cell under the axis first
        order = over[np.lexsort((-rank - rng.uniform(0, 1e-9, len(over)), pair[keep[over]]))]
        keep = np.delete(keep, order[~_first_k(pair[keep[order]], n)])
    core_pair, core_cell, core_u, core_cos = pair[keep], cell[keep], u[keep], cos[keep]
    core_central = central[keep]
    # tail: points on cells whose centres lie beyond the core radius (the core decided the
    # others), for the hits the core did not give; distinct cells in draw order. Where the
    # core is several cells wide, points are drawn from one circumradius inside its radius:
    # the inner parts of the cells that straddle it belong to the tail too (drawn beyond it,
    # those cells were starved and their hits pushed outwards: 0.4 mm too wide above 100 GeV,
    # measured); where it is a cell or two, the mixture's law of cell-centre distances is
    # closer to points drawn beyond it (drawn from inside, low-energy photons came out narrow)
    need = n - np.bincount(core_pair, minlength=len(n))
    circum = np.where(below >= 0, stencil.circumradius[below], 0.0)
    r_from = np.where(r_core >= WIDE_CORE * circum, r_core - circum, r_core)
    t_pair, t_cell = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for draws in (1.3, 2.0, 3.0):  # rounds with more points per missing hit; rarely a third
        if not need.any():
            break
        p, cc = _tail_points((log_w, mean, sigma, tilt), need, r_from, r_core, axis, frame,
                             layer, geom, draws, rng)
        _, first = np.unique(np.concatenate([t_pair, p]) * geom.n_cells
                             + np.concatenate([t_cell, cc]), return_index=True)
        new = np.sort(first[first >= len(t_pair)]) - len(t_pair)
        new = new[_first_k(p[new], need)]
        t_pair, t_cell = np.concatenate([t_pair, p[new]]), np.concatenate([t_cell, cc[new]])
        need -= np.bincount(p[new], minlength=len(n))
    t_r, t_cos = _polar(geom, t_cell, axis[t_pair], frame[t_pair])
    t_u = np.log(t_r + R0_MM)
    return (np.concatenate([core_pair, t_pair]), np.concatenate([core_cell, t_cell]),
            np.concatenate([core_u, t_u]), np.concatenate([core_cos, t_cos]),
            np.concatenate([core_central, np.zeros(len(t_pair), bool)]))


def _ahead(primaries: Primaries) -> np.ndarray:
    """(n, 2) unit vectors along the primaries' transverse directions (+y if along z)."""
    d = primaries.direction[:, :2].astype(np.float64)
    norm = np.hypot(d[:, 0], d[:, 1])
    return np.where(norm[:, None] > 1e-9, d / np.maximum(norm, 1e-9)[:, None], [0.0, 1.0])


def _cos(dx: np.ndarray, dy: np.ndarray, r: np.ndarray, ahead: np.ndarray) -> np.ndarray:
    """cos of the azimuth of offsets (dx, dy) of length r from the unit vectors ``ahead``
    (n, 2); 0 at the point itself."""
    return (dx * ahead[:, 0] + dy * ahead[:, 1]) / np.maximum(r, 1e-9)


def _polar(geom: Geometry, cell: np.ndarray, xy: np.ndarray, ahead: np.ndarray):
    """(r mm, cos of the azimuth from ``ahead``) of cell centres around points ``xy``."""
    dx, dy, r = _offsets(geom, cell, xy)
    return r, _cos(dx, dy, r, ahead)


def _tail_points(mixture, k: np.ndarray, r_from: np.ndarray, r_core: np.ndarray, axis, frame,
                 layer, geom: Geometry, draws: float, rng: np.random.Generator):
    """(pair, cell) of ceil(draws x k[p]) + 1 points per pair p drawn from its mixture beyond
    r_from[p], in draw order (pairs ascending), keeping those on cells whose centres lie beyond
    r_core[p]."""
    log_w, mean, sigma, tilt = mixture
    pair = np.repeat(np.arange(len(k)), np.where(k > 0, np.ceil(draws * k).astype(int) + 1, 0))
    a = (np.log(r_from + R0_MM)[:, None] - mean) / sigma  # (P, K): the cut per component
    inside, outside = special.ndtr(a), special.ndtr(-a)
    comp = _component((np.exp(log_w) * outside)[pair], rng)
    q = inside[pair, comp] + rng.uniform(size=len(pair)) * outside[pair, comp]
    u = mean[pair, comp] + sigma[pair, comp] * special.ndtri(np.minimum(q, 1 - 1e-12))
    phi = _azimuths(anisotropy(tilt[pair], u), rng)
    phi += np.arctan2(frame[:, 1], frame[:, 0])[pair]
    rad = np.exp(u) - R0_MM
    xy = axis[pair] + np.stack([rad * np.cos(phi), rad * np.sin(phi)], -1)
    cell = geom.lookup(layer[pair], xy[:, 0], xy[:, 1])
    ok = cell >= 0
    ok[ok] = _offsets(geom, cell[ok], axis[pair[ok]])[2] > r_core[pair[ok]]
    return pair[ok], cell[ok]


def core_shift(batch: ShowerBatch, geom: Geometry, axis: np.ndarray,
               e_layer: np.ndarray) -> np.ndarray:
    """(n, 2) mm: the shift of each shower's core, the flow's centre. The centroid of the
    energy within AXIS_MM of the axis, less its part explained by the lattice: the offset of the
    cell under the axis point from it (averaged over layers by energy), times the least-squares
    slope over the sample. The placement puts cells at their true positions around the shifted
    axis and so makes the lattice's part itself (measured on 6,000 photons: in x the slope is
    0.39 and the offset explains all but 0.21 of the centroid's 0.70 mm spread above 100 GeV)."""
    centroid = shower_centre(batch, geom, AXIS_MM)
    n, n_layers, _ = axis.shape
    layer = np.tile(np.arange(n_layers), n)
    flat = axis.reshape(-1, 2)
    below = geom.lookup(layer, flat[:, 0], flat[:, 1])
    c = geom.cells
    offset = np.where((below >= 0)[:, None], np.stack([c["x"][below], c["y"][below]], -1)
                      - flat, 0.0).reshape(n, n_layers, 2)
    w = e_layer / np.maximum(e_layer.sum(1, keepdims=True), 1e-12)
    offset = (w[..., None] * offset).sum(1)
    slope = (centroid * offset).sum(0) / np.maximum((offset * offset).sum(0), 1e-12)
    return centroid - slope * offset


def pair_inputs(e_layer: torch.Tensor, hits: torch.Tensor, depth: torch.Tensor,
                mean_depth: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """(..., 5 + C) inputs of the hit networks per (shower, layer) pair: FlowGNN's pair features
    and the conditions ``ctx`` (broadcast over the pairs), for training and generation alike."""
    f = pair_features(e_layer, hits, depth, mean_depth)
    return torch.cat([f, ctx.expand(*f.shape[:-1], -1)], -1)


def layer_groups(n_layers: int, groups: int) -> np.ndarray:
    """(L,) the group of every layer: ``groups`` runs of consecutive layers, as equal as can be."""
    return np.arange(n_layers) * groups // n_layers


def lateral_terms(width: torch.Tensor, vector: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hit networks' inputs (..., 2) and the azimuth frames (..., 2) of (shower, layer)
    pairs from their groups' lateral latents: the mean u ``width`` (...), standardised by its
    flow norms mean, std (...), and the length of the azimuth vector ``vector`` (..., 2); the
    vector's unit direction ((1, 0) if it is ~0), as (cos, sin) from the primary's transverse
    direction."""
    length = torch.sqrt((vector * vector).sum(-1))
    unit = torch.where(length[..., None] > 1e-6, vector / length.clamp(min=1e-6)[..., None],
                       torch.tensor([1.0, 0.0]))
    return torch.stack([(width - mean) / std, length], -1), unit


def share_logit(share: np.ndarray) -> np.ndarray:
    """The flow's variable for a core energy share in [0, 1]: logit((s + f) / (1 + 2 f)),
    f = SHARE_FLOOR (groups with all or none of their energy in the core stay finite)."""
    return np.log((share + SHARE_FLOOR) / (1.0 - share + SHARE_FLOOR))


def share_of(logit: np.ndarray) -> np.ndarray:
    """The core energy share of the flow's variable (share_logit's inverse, clipped to [0, 1])."""
    return np.clip((1 + 2 * SHARE_FLOOR) * special.expit(logit) - SHARE_FLOOR, 0.0, 1.0)


def in_share_core(u: np.ndarray) -> np.ndarray:
    """Whether hits at u = ln(r + R0_MM) lie within SHARE_MM of the shifted axis (the core of
    the core share, in training and in the placement alike)."""
    return u < np.log(SHARE_MM + R0_MM)


def impose_shares(e: np.ndarray, core: np.ndarray, pair: np.ndarray, e_pair: np.ndarray,
                  key: np.ndarray, share: np.ndarray, steps: int = 24) -> np.ndarray:
    """Hit energies e (h,) with the core hits' (``core`` (h,) bool) scaled by one factor per
    (shower, layer group), so that once every pair's hits are rescaled to its energy e_pair (p,)
    each group's energy has the core share ``share`` (k,); ``pair`` (h,) is each hit's pair,
    ``key`` (p,) each pair's group. The factor is found by bisection in its log, which shifts
    the log-odds of every pair's own core share alike; it is capped at exp(+-SHARE_SHIFT): a
    share out of reach (a group with little core or halo) is approached, not forced."""
    core_e = np.bincount(pair, e * core, len(e_pair))
    own = core_e / np.maximum(np.bincount(pair, e, len(e_pair)), 1e-300)
    with np.errstate(divide="ignore"):
        own = special.logit(own)  # -inf / +inf: pairs with no halo / core energy keep theirs
    goal = share * np.bincount(key, e_pair, len(share))
    lo, hi = np.full(len(share), -SHARE_SHIFT), np.full(len(share), SHARE_SHIFT)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        low = np.bincount(key, e_pair * special.expit(own + mid[key]), len(share)) < goal
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return e * np.where(core, np.exp(0.5 * (lo + hi))[key][pair], 1.0)


class HitData(TrainingData):
    """FlowGNN's training data plus every hit's u, cos and sin of its azimuth from the
    primary's transverse direction, ln(e / mean hit energy) and whether its cell is the one
    under the axis point, grouped by (shower, layer) pair; the showers' lateral latents."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        super().__init__(batch, geom)
        self.centre = core_shift(batch, geom, self.axis, self.e_layer)
        c = geom.cells
        layer = c["layer"][self.hit_id]
        axis = self.axis[self.hit_event, layer] + self.centre[self.hit_event]
        ahead = _ahead(batch.primaries)[self.hit_event]
        dx, dy, r = _offsets(geom, self.hit_id, axis)
        central = self.hit_id == geom.lookup(layer, axis[:, 0], axis[:, 1])
        mean_e = self.e_layer[self.hit_event, layer] / self.n_layer[self.hit_event, layer]
        n_layers = len(geom.layers)
        pair = self.hit_event * n_layers + layer
        order = np.argsort(pair, kind="stable")
        self.hit_pair, self.hit_u = pair[order], np.log(r[order] + R0_MM)
        self.hit_e = self.hit_energy[order]
        self.hit_log_e = np.log(self.hit_e / mean_e[order])
        self.hit_central = central[order]
        self.hit_cos = _cos(dx, dy, r, ahead)[order]
        self.hit_sin = _cos(dx, dy, r, ahead @ np.array([[0.0, 1.0], [-1.0, 0.0]]))[order]
        self.pairs = np.unique(self.hit_pair)
        self.bounds = np.searchsorted(self.hit_pair, np.stack([self.pairs, self.pairs + 1]))
        self.pair_central = np.add.reduceat(self.hit_central, self.bounds[0]) > 0
        self.n_layers = n_layers
        self._lateral: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._shares: dict[int, np.ndarray] = {}

    def lateral(self, groups: int) -> np.ndarray:
        """(n, 3G) the showers' lateral latents for G layer groups (layer_groups): per group
        the mean u of its hits (where it has none, the mean over the showers that have some),
        then per group the mean (cos, sin) of the azimuths (from the primary's transverse
        direction) of its hits beyond AXIS_MM (0 if none)."""
        return self._lateral_sums(groups)[0]

    def _lateral_sums(self, groups: int) -> tuple[np.ndarray, np.ndarray]:
        """lateral(groups) and the sums (n * G, 2) of (cos, sin) of each (shower, group)'s
        hits beyond AXIS_MM, key shower * G + group."""
        if groups not in self._lateral:
            n = len(self)
            key = self._group_key(groups)
            count = np.bincount(key, minlength=n * groups).reshape(n, groups)
            width = np.bincount(key, self.hit_u, n * groups).reshape(n, groups)
            width = width / np.maximum(count, 1)
            fill = width.sum(0) / np.maximum((count > 0).sum(0), 1)
            width = np.where(count > 0, width, fill)
            far = self._far()
            n_far = np.maximum(np.bincount(key[far], minlength=n * groups), 1)
            sums = np.stack([np.bincount(key[far], w[far], n * groups)
                             for w in (self.hit_cos, self.hit_sin)], -1)
            dipole = (sums / n_far[:, None]).reshape(n, 2 * groups)
            self._lateral[groups] = np.concatenate([width, dipole], -1), sums
        return self._lateral[groups]

    def core_shares(self, groups: int) -> np.ndarray:
        """(n, G) share_logit of each (shower, layer group)'s share of its energy within
        SHARE_MM of the shifted axis (where a group has no hits, the mean over the showers that
        have some). Computed once per G: flow_extra asks for it at every training step."""
        if groups not in self._shares:
            n, key = len(self), self._group_key(groups)
            total = np.bincount(key, self.hit_e, n * groups).reshape(n, groups)
            core = np.bincount(key, self.hit_e * in_share_core(self.hit_u),
                               n * groups).reshape(n, groups)
            x = share_logit(core / np.maximum(total, 1e-300))
            fill = (x * (total > 0)).sum(0) / np.maximum((total > 0).sum(0), 1)
            self._shares[groups] = np.where(total > 0, x, fill)
        return self._shares[groups]

    def _group_key(self, groups: int, hit=slice(None)) -> np.ndarray:
        """shower * G + layer group of the hits ``hit`` (all by default)."""
        pair = self.hit_pair[hit]
        return (pair // self.n_layers) * groups \
            + layer_groups(self.n_layers, groups)[pair % self.n_layers]

    def _far(self, hit=slice(None)) -> np.ndarray:
        """Whether the hits ``hit`` lie beyond AXIS_MM (those of the azimuth vectors)."""
        return self.hit_u[hit] > np.log(AXIS_MM + R0_MM)

    def hit_frames(self, groups: int, hit: np.ndarray) -> np.ndarray:
        """(len(hit), 2) the azimuth frames of the hits ``hit`` in training, as (cos, sin) from
        the primary's transverse direction: the direction of their group's azimuth vector
        without the hit itself ((1, 0) where the rest has none). Leave one out: with the hit,
        the frame leans towards it, and the azimuth law learnt in such frames would add the
        vector's sampling noise to the generated showers a second time."""
        sums = self._lateral_sums(groups)[1][self._group_key(groups, hit)]
        rest = sums - np.where(self._far(hit)[:, None],
                               np.stack([self.hit_cos[hit], self.hit_sin[hit]], -1), 0.0)
        length = np.hypot(rest[:, 0], rest[:, 1])
        return np.where(length[:, None] > 1e-9, rest / np.maximum(length, 1e-9)[:, None],
                        [1.0, 0.0])

    def flow_extra(self, cfg: LayerHitsConfig, index: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray | None:
        """The lateral latents of showers ``index`` (see lateral), dequantised: widths by
        uniform noise of +-0.05, the azimuth vectors by Gaussian noise of DIPOLE_NOISE; with
        ``core_share`` then the groups' core_shares (uniform noise of +-0.05)."""
        g = cfg.lateral_groups
        if not g:
            return None
        x = self.lateral(g)[index]
        noise = np.concatenate([rng.uniform(-0.05, 0.05, (len(x), g)),
                                rng.normal(0, DIPOLE_NOISE, (len(x), 2 * g))], -1)
        if not cfg.core_share:
            return x + noise
        shares = self.core_shares(g)[index] + rng.uniform(-0.05, 0.05, (len(x), g))
        return np.concatenate([x + noise, shares], -1)


class LayerHits(LayerFlowGenerator):
    """Stage 1 (layer-level flow) + stage 2 (hit networks); see the module docstring."""

    name = "layerhits"
    training = "steps"
    config_type = LayerHitsConfig
    questions: ClassVar[dict[str, str]] = {
        **LayerFlowGenerator.questions,
        "data_structure": "a layer-level vector ln(E_l / E), ln(1 + N_l) per layer and the core's "
                          "centre; hits as u = ln(r + 1 mm), azimuth and ln(e / mean hit energy) "
                          "around the shifted axis; cells by the geometry lookup (node = cell)",
        "tuning": "maximum likelihood (flow, radial, azimuth and energy NLL); per-stage early "
                  "stopping on validation losses; separation power and FPD logged"}
    loss_weights: ClassVar[dict[str, float]] = {"flow_nll": 1.0, "radius_nll": 1.0,
                                                "azimuth_nll": 1.0, "energy_nll": 1.0}
    stages: ClassVar[dict[str, tuple[str, ...]]] = {"flow": ("flow_nll",),
                                                    "hits": ("radius_nll", "azimuth_nll",
                                                             "energy_nll")}

    def __init__(self, geom: Geometry, particles: list[str], cfg: LayerHitsConfig, norms: dict):
        super().__init__(geom, particles, cfg, norms)
        self.hits = HitNet(5 + self.context_dim + cfg.shower_response, cfg,
                           2 * bool(cfg.lateral_groups))
        g = cfg.lateral_groups
        if g:  # plain tensors (constants of the program), not state
            first = 2 * self.n_layers + 2  # the latents' place in the flow's vector
            self._group = torch.from_numpy(layer_groups(self.n_layers, g))
            self._width_norm = [torch.tensor(norms[k][first:first + g], dtype=torch.float32)
                                for k in ("flow_mean", "flow_std")]
        if cfg.central_hit:  # one more loss term, trained with the other hit networks
            self.loss_weights = {**self.loss_weights, "central_nll": 1.0}
            self.stages = {**self.stages, "hits": (*self.stages["hits"], "central_nll")}

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def training_data(cls, batch: ShowerBatch, geom: Geometry) -> HitData:
        return HitData(batch, geom)

    @classmethod
    def build(cls, data: HitData, geom: Geometry, cfg: LayerHitsConfig, seed: int) -> LayerHits:
        model = super().build(data, geom, cfg, seed)
        if cfg.shower_response:  # its standardisation, from the training split
            r = np.log(np.maximum(data.e_layer.sum(1), 1e-9) / data.primaries.energy_mev)
            model.norms.update(response_mean=float(r.mean()), response_std=float(r.std() + 1e-6))
        return model

    def selection_loss(self, stage: str, record: dict) -> float:
        if stage == "flow" and self.cfg.flow_selection == "fpd":
            return record["fpd"]
        return super().selection_loss(stage, record)

    def pair_context(self, ctx: torch.Tensor, e_vis: torch.Tensor,
                     e_inc: torch.Tensor) -> torch.Tensor:
        """The shower-level inputs of the hit networks: the conditions ``ctx`` (n, C) and, with
        ``shower_response``, the standardised ln(E_vis / E) from the layer energies' sum e_vis
        (n,) and the incident energy e_inc (n,), both MeV."""
        if not self.cfg.shower_response:
            return ctx
        r = torch.log(e_vis.clamp(min=1e-9) / e_inc)
        return torch.cat([ctx, ((r - self.norms["response_mean"])
                                / self.norms["response_std"])[:, None]], -1)

    def lateral_pairs(self, extra: torch.Tensor, layer: torch.Tensor,
                      f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair inputs f (..., F) with, given lateral latents, their groups' (lateral_terms)
        appended, and the directions (..., 2) of the pairs' azimuth frames as (cos, sin) from
        the primary's transverse direction ((1, 0) without latents), from the showers' lateral
        latents ``extra`` (..., 3G) (unscaled). ``layer`` (...) broadcasts against extra's
        leading axes."""
        g = self.cfg.lateral_groups
        if not g:
            return f, torch.tensor([1.0, 0.0]).expand(*f.shape[:-1], 2)
        group = self._group[layer].expand(f.shape[:-1])
        extra = extra.expand(*f.shape[:-1], -1)

        def take(k: torch.Tensor) -> torch.Tensor:
            return extra.gather(-1, k[..., None])[..., 0]

        inputs, unit = lateral_terms(take(group), torch.stack([take(g + 2 * group),
                                                               take(g + 2 * group + 1)], -1),
                                     *(n[group] for n in self._width_norm))
        return torch.cat([f, inputs], -1), unit

    def forward(self, data: HitData, rng: np.random.Generator, scale: int = 1,
                shard: tuple[int, int] = (0, 1)) -> dict[str, tuple[torch.Tensor, float]]:
        """Loss terms as (sum, count) over this rank's share: the flow's NLL per feature, the
        hits' radial NLL (in u), their azimuths' NLL (less ln 2 pi) and their energies' NLL."""
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
        f = pair_inputs(
            torch.from_numpy(data.e_layer[event, layer]).float(),
            torch.from_numpy(data.n_layer[event, layer]).float(),
            torch.from_numpy(self.depth[layer]), torch.from_numpy(data.mean_depth[event]).float(),
            self.pair_context(self.context(data.primaries.subset(event)),
                              torch.from_numpy(data.e_layer[event].sum(1)).float(),
                              torch.from_numpy(data.primaries.energy_mev[event]).float()))
        g = self.cfg.lateral_groups  # the true latents
        extra = torch.from_numpy(data.lateral(g)[event] if g else np.zeros((len(event), 0)))
        f, _ = self.lateral_pairs(extra.float(), torch.from_numpy(layer), f)
        hit_pair = torch.from_numpy(np.repeat(np.arange(len(pick)), counts))
        u = torch.from_numpy(data.hit_u[hit]).float()
        log_w, mean, log_sigma, tilt, *central_logit = self.hits.mixture(f)
        radial, tilt = (log_w[hit_pair], mean[hit_pair], log_sigma[hit_pair]), tilt[hit_pair]
        radius = -_log_prob(radial, u).sum()
        cos_ahead = torch.from_numpy(data.hit_cos[hit]).float()
        cos = cos_ahead if not g else torch.from_numpy(  # in the frames, leaving the hit out
            (np.stack([data.hit_cos[hit], data.hit_sin[hit]], -1)
             * data.hit_frames(g, hit)).sum(-1)).float()
        azimuth = -torch.log1p(2 * anisotropy(tilt, u) * cos).sum()
        central = torch.from_numpy(data.hit_central[hit]).float()
        y = torch.from_numpy(data.hit_log_e[hit]).float()
        x = hit_inputs(u, central, cos, cos_ahead if g else None)
        energy = -_log_prob(self.hits.energy_mixture(f, hit_pair, x), y).sum()
        terms = {"flow_nll": (flow, x.numel()), "radius_nll": (radius, len(hit)),
                 "azimuth_nll": (azimuth, len(hit)), "energy_nll": (energy, len(hit))}
        if central_logit:  # is the cell under the axis point a hit of the pair?
            terms["central_nll"] = (nn.functional.binary_cross_entropy_with_logits(
                central_logit[0][:, 0], torch.from_numpy(data.pair_central[pick]).float(),
                reduction="sum"), len(pick))
        return terms

    # ---- generation --------------------------------------------------------------------------
    def export_module(self) -> LayerHitsProgram:
        """Stage 1 and the pair networks as one tensor program (ONNX export traces it)."""
        if "_program" not in self.__dict__:  # plain attribute: not a registered submodule
            self.__dict__["_program"] = LayerHitsProgram(self).eval()
        return self.__dict__["_program"]

    def export_side(self) -> dict:
        """The host step's settings and the per-hit layers of the energy network."""
        layers = {"hit": self.hits.energy_hit, "layers": self.hits.energy}
        return {"core_mm": self.cfg.core_mm, "core_hits_per_cell": self.cfg.core_hits_per_cell,
                "components": self.cfg.components, "energy_hidden": self.cfg.energy_hidden,
                "energy_inputs": energy_inputs(self.cfg),
                "energy_components": self.cfg.energy_components,
                "energy_net": {name: {k: v.tolist() for k, v in m.state_dict().items()}
                               for name, m in layers.items()}}

    @classmethod
    def host(cls, side: dict, geom: Geometry) -> Placement:
        return Placement(side, geom)


class LayerHitsProgram(nn.Module):
    """(energy MeV (P,), position mm (P, 3), unit direction (P, 3), particle index (P,), flow
    noise (P, D)) -> per shower and layer: energy e_layer (P, L) MeV, hit count hits (P, L), the
    shifted axis point axis (P, L, 2) mm, the radial mixture (P, L, 3K + 2 [+ 1]) (log
    weights, means, log sigmas in u; the azimuth law's tilt; with ``central_hit`` the logit of
    the probability that the cell under the axis point is a hit) and the energy network's pair
    share energy_pair (P, L, H), the azimuth frame (P, L, 2) (unit vectors from which azimuths
    are measured: LayerHits.lateral_pairs) and, with ``core_share``, the groups' core share
    latents share (P, G) (share_logit). The flow and networks are the model's, shared."""

    output_names = ("e_layer", "hits", "axis", "mixture", "energy_pair", "frame")
    chunk = 1024  # showers per call: ~50 kB of outputs each, the flow's overhead amortised

    def __init__(self, model: LayerHits):
        super().__init__()
        self.level, self.hits = LayerLevel(model), model.hits
        self.pair_context, self.lateral_pairs = model.pair_context, model.lateral_pairs
        register_buffers(self, {"depth": model.depth, "layer_z": layer_z(model.geom)})
        self.noise = {"z": ("normal", (self.level.flow_dim,))}
        self.shares = model.cfg.lateral_groups if model.cfg.core_share else 0
        if self.shares:
            self.output_names = (*self.output_names, "share")

    def forward(self, energy, position, direction, particle, z):
        ctx, e_layer, hits, centre, extra = self.level(energy, direction, particle, z)
        p, n_layers = e_layer.shape
        mean_depth = centroid_depth(e_layer, self.depth)
        ctx = self.pair_context(ctx, e_layer.sum(1), energy)
        f = pair_inputs(e_layer, hits, self.depth[None].expand(p, -1), mean_depth[:, None],
                        ctx[:, None])  # (P, L, F)
        ax, ay = line_at(self.layer_z[None, :], *position[:, :, None].unbind(1),
                         *direction[:, :, None].unbind(1))  # (P, L)
        axis = torch.stack([ax + centre[:, 0:1], ay + centre[:, 1:2]], -1)
        f, unit = self.lateral_pairs(extra[:, None], torch.arange(n_layers), f)
        frame = turned(_ahead_tensor(direction)[:, None], unit)
        out = (e_layer, hits, axis, torch.cat(self.hits.mixture(f), -1),
               self.hits.pair_share(f), frame)
        return (*out, extra[:, -self.shares:]) if self.shares else out


def turned(ahead: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """(..., 2) unit vectors in the layer plane from directions ``unit`` (..., 2) given as
    (cos, sin) from the unit vectors ``ahead`` (..., 2) (broadcast)."""
    perp = torch.stack([-ahead[..., 1], ahead[..., 0]], -1)
    return unit[..., :1] * ahead + unit[..., 1:] * perp


def _ahead_tensor(direction: torch.Tensor) -> torch.Tensor:
    """(P, 2) unit vectors along the transverse directions (P, 3) (+y if along z), as _ahead."""
    d = direction[:, :2]
    norm = torch.sqrt((d * d).sum(-1, keepdim=True))
    return torch.where(norm > 1e-9, d / norm.clamp(min=1e-9), torch.tensor([0.0, 1.0]))


class Placement:
    """The host step of LayerHits (numpy): from the program's outputs, the hit cells of every
    active (shower, layer) pair (place_hits), their energies from the per-hit layers of the
    energy network (``side["energy_net"]``), rescaled to the layer energy, and the showers."""

    def __init__(self, side: dict, geom: Geometry):
        self.geom, self.side = geom, side
        self.hit, self.layers = energy_layers(side["energy_hidden"], side["energy_components"],
                                              side.get("energy_inputs", 3))
        for name, m in (("hit", self.hit), ("layers", self.layers)):
            m.load_state_dict({k: torch.tensor(v, dtype=torch.float32)
                               for k, v in side["energy_net"][name].items()})
        for m in self.layers:  # no gradients here: activations in place
            if isinstance(m, nn.SiLU):
                m.inplace = True
        self.stencil = Stencil.of(geom, side["core_mm"])
        self.threshold = 1.02 * THRESHOLD_MIP * geom.mip_energy

    @torch.no_grad()
    def energy_mixture(self, h_pair: np.ndarray, x: torch.Tensor):
        """The hits' energy mixtures (float64 numpy; log weights up to a constant per hit)
        from the pair shares h_pair (n, H) and hit_inputs x: the per-hit layers that HitNet
        trains."""
        out = energy_out(self.hit, self.layers, torch.from_numpy(h_pair), x)
        logits, mean, log_sigma = out.double().chunk(3, -1)
        return logits.numpy(), mean.numpy(), log_sigma.clamp(-4, 2).numpy()

    def __call__(self, out: dict, primaries: Primaries, rng: np.random.Generator):
        """Showers from the program's outputs, placed HOST_BLOCK showers at a time (a block's
        arrays stay small: time and memory per shower do not grow with the batch)."""
        parts = [(np.zeros(0, np.int64),) * 2 + (np.zeros(0),)]
        ahead = _ahead(primaries)
        for lo in range(0, len(primaries), HOST_BLOCK):
            block = {k: v[lo:lo + HOST_BLOCK] for k, v in out.items()}
            event, cell, e = self.place(block, ahead[lo:lo + HOST_BLOCK], rng)
            parts.append((event + lo, cell, e))
        event, cell, e = (np.concatenate(p) for p in zip(*parts, strict=True))
        return to_batch(primaries, self.geom, event, cell, e)

    def place(self, out: dict, ahead: np.ndarray, rng: np.random.Generator):
        """(shower, cell, energy MeV) of every hit of a block of showers (ahead (P, 2): the
        primaries' transverse directions)."""
        hits = out["hits"]
        event, layer = np.nonzero(hits)
        n = hits[event, layer].astype(np.int64)
        k = self.side["components"]
        *mixture, logit = np.split(out["mixture"][event, layer].astype(np.float64),
                                   [k, 2 * k, 3 * k, 3 * k + 2], axis=-1)
        p_central = special.expit(logit[:, 0]) if logit.shape[1] else None
        axis = out["axis"][event, layer].astype(np.float64)
        pair, cell, u, cos, central = place_hits(
            mixture, n, axis, out["frame"][event, layer].astype(np.float64), layer,
            self.geom, self.stencil, self.side["core_mm"], rng, self.side["core_hits_per_cell"],
            p_central)
        cos_ahead = (_polar(self.geom, cell, axis[pair], ahead[event][pair])[1]
                     if self.side.get("energy_inputs", 3) == 4 else None)
        h_pair = out["energy_pair"][event, layer][pair]
        e = np.exp(_draw(self.energy_mixture(h_pair, hit_inputs(u, central, cos, cos_ahead)),
                         rng))
        e_pair = out["e_layer"][event, layer].astype(np.float64)
        if "share" in out:  # the flow's core share of each layer group
            groups = out["share"].shape[1]
            key = event * groups + layer_groups(out["hits"].shape[1], groups)[layer]
            e = impose_shares(e, in_share_core(u), pair, e_pair, key,
                              share_of(out["share"].astype(np.float64)).ravel())
        e *= (e_pair / np.maximum(np.bincount(pair, e, len(n)), 1e-12))[pair]
        return event[pair], cell, np.maximum(e, self.threshold[cell])
