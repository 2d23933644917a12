"""Classical parametrised fast simulation in the spirit of GFlash (Grindhammer & Peters).

Per shower: a longitudinal Gamma profile whose parameters (ln alpha, ln T = ln of the mean
depth, ln of the visible response) are drawn from a Gaussian with energy-dependent mean
and covariance (the correlated fluctuations); per layer: Gamma-distributed sampling
fluctuations; transversely: a core + tail radial profile, f(r) = p f_C + (1 - p) f_T with
f_R(r) = 2 r R^2 / (r^2 + R^2)^2, whose R_C, R_T, p depend on the depth relative to the mean
depth, around a per-shower shifted centre; energy spots of equal energy placed on cells by the
geometry lookup.

Depth is counted in radiation lengths for e±/γ and in nuclear interaction lengths for hadrons
(the hadronic profile: one Gamma in λ_I, the cheap end of GFlash's hadronic parametrisation,
whose EM part in X0 it leaves out), per particle.

Every parameter is fitted to a Geant4 sample (``fit``). Approximations, named:
the profile is fitted by moments of the dE/dx-weighted layer energies (not a full likelihood);
a hadron's profile is one Gamma in λ_I (no separate EM component in X0: its π0 fraction and the
EM part's early peak are averaged into the one shape);
the radial parameters depend on relative depth only (not on energy); a spot falling outside the
region gives its energy to its layer's spots inside it; the spot energy is one
number fitted to the mean hit count.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import optimize, special

from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_offsets, axis_points, dedx_weights
from fastshower.models.base import ShowerGenerator, TrainingRanges
from fastshower.models.showers import (
    layer_summary,
    particle_index,
    particle_names,
    shower_centre,
    to_batch,
)
from fastshower.simhits import HADRONS, Primaries, ShowerBatch

N_ENERGY_BINS = 5
MEAN_DEPTH = {"x0": (0.5, 40.0), "lambda": (0.05, 8.0)}  # bounds of a drawn mean depth, per unit
TAU_EDGES = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 1e3])


def layer_weights(geom: Geometry) -> np.ndarray:
    """(L,) median dE/dx weight of each layer's cells."""
    w, layer = dedx_weights(geom), geom.cells["layer"]
    return np.array([np.median(w[layer == i]) for i in range(len(geom.layers))])


def depth_unit(particle: str) -> str:
    """The depth unit of a particle's profile: "lambda" (λ_I) for hadrons, "x0" otherwise."""
    return "lambda" if particle in HADRONS else "x0"


def layer_depth(geom: Geometry, unit: str) -> np.ndarray:
    """(L,) depth of each layer's sensor in ``unit`` ("x0" or "lambda")."""
    return np.array([getattr(lay, f"depth_{unit}") for lay in geom.layers])


def depth_bins(t: np.ndarray) -> np.ndarray:
    """(L + 1,) depth edges around each layer's sensor at depths ``t`` (L,): midpoints."""
    mid = 0.5 * (t[1:] + t[:-1])
    return np.concatenate([[0.0], mid, [t[-1] + (t[-1] - mid[-1])]])


def shower_depths(geom: Geometry, units: list[str], kind: np.ndarray):
    """Per shower of particle index ``kind`` (n,): its layers' depths (n, L) and depth edges
    (n, L + 1) in its particle's unit (``units``, one per particle)."""
    depth = np.stack([layer_depth(geom, u) for u in units])
    return depth[kind], np.stack([depth_bins(t) for t in depth])[kind]


def gamma_fractions(alpha: np.ndarray, mean_depth: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n, L) fraction of a Gamma(alpha, beta = alpha / mean_depth) profile in each depth bin
    (``edges``: (L + 1,) or per shower (n, L + 1))."""
    beta = alpha / mean_depth
    cdf = special.gammainc(alpha[:, None], beta[:, None] * edges)
    return np.diff(cdf, axis=1)


def layer_profile(visible: np.ndarray, alpha: np.ndarray, mean_depth: np.ndarray,
                  weights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n, L) sensor energies (MeV): the Gamma profile of the deposited energy seen through
    each layer's sampling (1 / dE/dx weight), scaled to ``visible`` (n,) MeV in total."""
    seen = gamma_fractions(alpha, mean_depth, edges) / weights
    return visible[:, None] * seen / np.maximum(seen.sum(1, keepdims=True), 1e-30)


def profile_moments(weighted: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(n, 3): ln alpha, ln mean depth, ln total of dE/dx-weighted layer energies (n, L) at
    layer depths ``depth`` ((L,) or (n, L)) (the caller replaces the last column by the ln
    visible response)."""
    total = np.maximum(weighted.sum(axis=1), 1e-9)
    mean = (weighted * depth).sum(1) / total
    var = np.maximum((weighted * depth**2).sum(1) / total - mean**2, 1e-3)
    return np.stack([np.log(mean**2 / var), np.log(mean), np.log(total)], -1)


def radial_pdf(r: np.ndarray, r_core: float, r_tail: float, p_core: float) -> np.ndarray:
    core = 2 * r * r_core**2 / (r**2 + r_core**2) ** 2
    tail = 2 * r * r_tail**2 / (r**2 + r_tail**2) ** 2
    return p_core * core + (1 - p_core) * tail


def fit_radial(r: np.ndarray, weight: np.ndarray) -> list[float]:
    """Weighted maximum-likelihood (R_C, R_T, p) in mm for radii r (mm)."""
    def nll(q):
        rc, rt, p = np.exp(q[0]), np.exp(q[1]), special.expit(q[2])
        return -np.sum(weight * np.log(radial_pdf(r, rc, rt, p) + 1e-300)) / weight.sum()

    res = optimize.minimize(nll, x0=[np.log(5.0), np.log(30.0), 1.0], method="Nelder-Mead",
                            options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-8})
    rc, rt, p = np.exp(res.x[0]), np.exp(res.x[1]), special.expit(res.x[2])
    return [float(min(rc, rt)), float(max(rc, rt)), float(p if rc <= rt else 1 - p)]


class ParametricShower(ShowerGenerator):
    """GFlash-like generator: ``fit`` on Geant4 showers, ``sample`` for new primaries."""

    name = "parametric"
    training = "fit"
    questions: ClassVar[dict[str, str]] = {
        "data_structure": "GFlash-like: Gamma longitudinal profile, two-component radial law, "
                          "equal-energy spots on cells by the geometry lookup",
        "condition_encoding": "ln E, per particle",
        "tuning": "one-pass moment and maximum-likelihood fits (docs/models.md)",
        "model_format": "PyTorch file of arrays (torch.load weights_only)",
        "inference_library": "numpy"}

    def __init__(self, params: dict, geom: Geometry):
        self.params, self.geom = params, geom
        self.particles = list(params["particles"])
        lo, hi = params["energy_range_mev"]
        self.ranges = TrainingRanges(energy_gev=(lo / 1e3, hi / 1e3))

    @classmethod
    def fit(cls, batch: ShowerBatch, geom: Geometry, config=None,
            seed: int = 0) -> ParametricShower:
        e_layer, n_layer = layer_summary(batch, geom)
        pdg = batch.primaries.pdg
        particles = particle_names(pdg)
        units = [depth_unit(name) for name in particles]
        kind = particle_index(pdg, particles)
        w, (depth, edges) = layer_weights(geom), shower_depths(geom, units, kind)
        y = profile_moments(e_layer * w, depth)
        log_e = np.log(batch.primaries.energy_mev)
        y[:, 2] = np.log(np.maximum(e_layer.sum(1), 1e-9)) - log_e  # ln of the response
        per_particle = {name: _fit_moments(log_e[kind == i], y[kind == i])
                        for i, name in enumerate(particles)}

        # sampling fluctuations: relative variance of layer energies about each shower's own
        # fitted Gamma profile, a / E_pred + b
        pred = layer_profile(np.exp(y[:, 2] + log_e), np.exp(y[:, 0]), np.exp(y[:, 1]), w,
                             edges)
        ok = pred > 1.0
        rel2 = (e_layer[ok] / pred[ok] - 1.0) ** 2
        a, b = np.linalg.lstsq(np.stack([1 / pred[ok], np.ones(ok.sum())], -1), rel2,
                               rcond=None)[0]

        # radial profile in bins of depth relative to the mean depth
        event, ids, energy, dx, dy = axis_offsets(batch, geom)
        tau = depth[event, geom.cells["layer"][ids]] / np.exp(y[event, 1])
        tau_bin = np.clip(np.digitize(tau, TAU_EDGES) - 1, 0, len(TAU_EDGES) - 2)
        r = np.hypot(dx, dy)
        radial = [fit_radial(r[tau_bin == k], energy[tau_bin == k])
                  if (tau_bin == k).sum() > 50 else None for k in range(len(TAU_EDGES) - 1)]
        radial = _fill_gaps(radial)

        params = {"particles": particles, "depth_units": units, "moments": per_particle,
                  "sampling": [float(max(a, 1e-4)), float(max(b, 1e-4))],
                  "radial": radial, "tau_edges": TAU_EDGES.tolist(),
                  "energy_range_mev": [float(batch.primaries.energy_mev.min()),
                                       float(batch.primaries.energy_mev.max())],
                  "spot_mev": 0.1}
        model = cls(params, geom)
        model.params["spot_mev"] = model._fit_spot(batch, geom, n_layer.sum(),
                                                   energy.sum() / max(len(energy), 1), seed)
        model.params["centre"] = model._fit_centre(batch, geom, seed)
        return model

    def _fit_spot(self, batch: ShowerBatch, geom: Geometry, n_hits: float, hit_mev: float,
                  seed: int) -> float:
        """Spot energy (MeV) that reproduces the total hit count of ``batch`` (bisection
        between 1/50 and 15 times the mean hit energy ``hit_mev``: the data's own scale, e.g.
        a sensor's visible MeV or a CaloChallenge voxel's)."""
        lo, hi = np.log(hit_mev / 50), np.log(hit_mev * 15)
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            self.params["spot_mev"] = float(np.exp(mid))
            gen = self.sample(batch.primaries, np.random.default_rng(seed))
            more = layer_summary(gen, geom)[1].sum() > n_hits  # smaller spots -> more hits
            lo, hi = (mid, hi) if more else (lo, mid)
        return float(np.exp(0.5 * (lo + hi)))

    def _fit_centre(self, batch: ShowerBatch, geom: Geometry, seed: int) -> dict:
        """Per-shower shift of the transverse centre (mm), in bins of ln E: the mean and the
        variance that Geant4 shows beyond what the spots' own sampling gives."""
        gen = self.sample(batch.primaries, np.random.default_rng(seed))
        c_data, c_model = shower_centre(batch, geom), shower_centre(gen, geom)
        log_e = np.log(batch.primaries.energy_mev)
        edges = np.quantile(log_e, np.linspace(0, 1, N_ENERGY_BINS + 1))
        which = np.clip(np.digitize(log_e, edges) - 1, 0, N_ENERGY_BINS - 1)
        rows = [(float(log_e[which == k].mean()),
                 (c_data[which == k].mean(0) - c_model[which == k].mean(0)).tolist(),
                 np.sqrt(np.maximum(c_data[which == k].var(0) - c_model[which == k].var(0),
                                    0.0)).tolist()) for k in range(N_ENERGY_BINS)]
        return {"log_e_centres": [r[0] for r in rows], "mean": [r[1] for r in rows],
                "sigma": [r[2] for r in rows]}

    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        """Showers for the given primaries (MeV, mm), placed on the geometry's cells."""
        p, geom = self.params, self.geom
        n, n_layers = len(primaries), len(geom.layers)
        log_e = np.log(primaries.energy_mev)
        kind = particle_index(primaries.pdg, p["particles"])
        y = np.zeros((n, 3))
        for i, name in enumerate(p["particles"]):
            sel = kind == i
            y[sel] = _sample_moments(p["moments"][name], log_e[sel], rng)
        alpha = np.clip(np.exp(y[:, 0]), 1.05, 60.0)
        units = p.get("depth_units", ["x0"] * len(p["particles"]))  # files before session 12
        w, (depth, edges) = layer_weights(geom), shower_depths(geom, units, kind)
        lo, hi = np.array([MEAN_DEPTH[u] for u in units]).T
        mean_depth = np.clip(np.exp(y[:, 1]), lo[kind], hi[kind])
        e_layer = layer_profile(np.exp(y[:, 2] + log_e), alpha, mean_depth, w, edges)
        a, b = p["sampling"]
        shape = 1.0 / (a / np.maximum(e_layer, 1e-6) + b)
        fluctuated = rng.gamma(shape, e_layer / shape)  # shape only: the total stays as drawn
        e_layer = fluctuated * (e_layer.sum(1) / np.maximum(fluctuated.sum(1), 1e-12))[:, None]

        # spots: equal-energy deposits around the axis, per (shower, layer)
        n_spots = np.ceil(e_layer / p["spot_mev"])
        n_spots = n_spots.astype(np.int64).ravel()
        pair = np.repeat(np.arange(n * n_layers), n_spots)
        event, layer = pair // n_layers, pair % n_layers
        spot_e = np.repeat(e_layer.ravel() / np.maximum(n_spots, 1), n_spots)
        tau = depth[event, layer] / mean_depth[event]
        tau_bin = np.clip(np.digitize(tau, p["tau_edges"]) - 1, 0, len(p["radial"]) - 1)
        rc, rt, pc = np.asarray(p["radial"])[tau_bin].T
        u = rng.uniform(1e-9, 1 - 1e-9, len(pair))
        r = np.where(rng.uniform(size=len(pair)) < pc, rc, rt) * np.sqrt(u / (1 - u))
        phi = rng.uniform(0, 2 * np.pi, len(pair))
        axis = axis_points(primaries, geom)[event, layer]
        if "centre" in p:  # absent while the centre itself is being fitted
            c = p["centre"]
            k = np.abs(log_e[:, None] - np.asarray(c["log_e_centres"])[None]).argmin(axis=1)
            shift = np.asarray(c["mean"])[k] + np.asarray(c["sigma"])[k] * rng.standard_normal(
                (n, 2))
            axis = axis + shift[event]
        ids = geom.lookup(layer, axis[:, 0] + r * np.cos(phi), axis[:, 1] + r * np.sin(phi))
        # the layer energy is what Geant4 records inside the region: spots outside it give
        # theirs to the layer's spots inside (radial laws fitted inside reach beyond it)
        inside = np.bincount(pair, weights=spot_e * (ids >= 0), minlength=n * n_layers)
        scale = np.divide(e_layer.ravel(), inside, out=np.zeros_like(inside), where=inside > 0)
        spot_e = spot_e * scale[pair]
        return to_batch(primaries, geom, event, ids, spot_e)

    def state(self) -> dict:
        return {"params": self.params}

    @classmethod
    def from_state(cls, state: dict, geom: Geometry) -> ParametricShower:
        return cls(state["params"], geom)


def _fit_moments(log_e: np.ndarray, y: np.ndarray) -> dict:
    """Mean of y (n, 3) as a quadratic in ln E; residual covariance in bins of ln E."""
    design = np.stack([np.ones_like(log_e), log_e, log_e**2], -1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    resid = y - design @ coef
    edges = np.quantile(log_e, np.linspace(0, 1, N_ENERGY_BINS + 1))
    centres, chols = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (log_e >= lo) & (log_e <= hi)
        cov = np.cov(resid[sel].T) + 1e-6 * np.eye(3)
        centres.append(float(log_e[sel].mean()))
        chols.append(np.linalg.cholesky(cov).tolist())
    return {"coef": coef.tolist(), "log_e_centres": centres, "cholesky": chols}


def _sample_moments(m: dict, log_e: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    design = np.stack([np.ones_like(log_e), log_e, log_e**2], -1)
    centres = np.asarray(m["log_e_centres"])
    nearest = np.abs(log_e[:, None] - centres[None, :]).argmin(axis=1)
    chol = np.asarray(m["cholesky"])[nearest]
    return design @ np.asarray(m["coef"]) + np.einsum("nij,nj->ni", chol,
                                                      rng.standard_normal((len(log_e), 3)))


def _fill_gaps(radial: list) -> list:
    """Depth bins without enough hits take the parameters of the nearest filled bin."""
    filled = [i for i, v in enumerate(radial) if v is not None]
    return [radial[min(filled, key=lambda j: abs(j - i))] for i in range(len(radial))]
