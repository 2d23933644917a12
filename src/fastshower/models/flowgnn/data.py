"""FlowGNN's training data: a split held in memory as layer-level vectors and per-layer hit
tables, and the mini-batches of both stages drawn from it."""

from __future__ import annotations

import numpy as np
import torch

from fastshower.data.transform import TransformConfig, select_hits
from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_points, centroid_depth, depth_x0
from fastshower.models.base import TrainingRanges
from fastshower.models.flowgnn.network import CENTRE_SCALE, E_DEQUANT
from fastshower.models.showers import layer_summary, shower_centre
from fastshower.simhits import ShowerBatch


def layer_vector(e_layer, n_layer, centre, e_inc, rng: np.random.Generator,
                 extra: np.ndarray | None = None) -> np.ndarray:
    """(n, 2L + 2 [+ X]) unscaled flow features, dequantised: ln(E_l / E_inc), ln(1 + N_l),
    centre, and a generator's own shower-level features ``extra`` (n, X) if any."""
    u = np.log((e_layer + rng.uniform(0, E_DEQUANT, e_layer.shape)) / e_inc[:, None])
    v = np.log1p(n_layer + rng.uniform(0, 1, n_layer.shape))
    parts = [u, v, centre / CENTRE_SCALE, *(() if extra is None else (extra,))]
    return np.concatenate(parts, -1).astype(np.float32)


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

    def flow_extra(self, cfg, index: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Shower-level features (len(index), X) that a generator adds to the flow's vector
        (dequantised with ``rng``), or None: FlowGNN has none."""
        return None

    def flow_batch(self, model, index: np.ndarray, rng: np.random.Generator):
        x = layer_vector(self.e_layer[index], self.n_layer[index], self.centre[index],
                         self.primaries.energy_mev[index], rng,
                         self.flow_extra(model.cfg, index, rng))
        x = (x - model.norms["flow_mean"]) / model.norms["flow_std"]
        ctx = model.context(self.primaries.subset(index))
        return torch.from_numpy(x.astype(np.float32)), ctx

    def cell_batch(self, model, n_pairs: int, rng: np.random.Generator,
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
            ids = model.graphs.ids(layer)
            key = events[None, :] * self.n_cells + ids[:, None]  # (N, P)
            pos = np.clip(np.searchsorted(self.hit_key, key), 0, len(self.hit_key) - 1)
            hit = self.hit_key[pos] == key
            mean_e = self.e_layer[events, layer] / self.n_layer[events, layer]
            log_e = np.log(self.hit_energy[pos[hit]] / np.broadcast_to(mean_e, hit.shape)[hit])
            groups.append((int(layer), inputs, torch.from_numpy(hit.astype(np.float32)),
                           torch.from_numpy(log_e.astype(np.float32))))
        return groups


CONSTANT_STD = 1e-4  # a condition with less spread (ln E, eta, rad) is constant: scaled by 1


def response_bound(e_vis: np.ndarray, e_inc: np.ndarray, bins: int = 10) -> dict:
    """The largest ln(E_vis / E) of training showers (MeV) in ``bins`` quantile bins of ln E,
    each widened to its neighbours' (the layer-level flow's guard against its own tails): the
    inner bin edges in ln E and the bound of each bin (an empty bin takes the overall one)."""
    log_e, log_r = np.log(e_inc), np.log(np.maximum(e_vis, 1e-12) / e_inc)
    edges = np.quantile(log_e, np.linspace(0, 1, bins + 1))[1:-1]
    which = np.searchsorted(edges, log_e, side="right")
    top = [log_r[which == k].max() if np.any(which == k) else log_r.max() for k in range(bins)]
    return {"log_e_edges": edges.tolist(),
            "log_response_max": [float(max(top[max(k - 1, 0):k + 2])) for k in range(bins)]}


def fit_norms(data: TrainingData, particles: list[str], cfg, seed: int = 0) -> dict:
    """Standardisation constants and the condition ranges of the training split (``cfg``: the
    generator's config, for its flow_extra)."""
    p = data.primaries
    eta, phi = p.eta_phi()
    num = np.stack([np.log(p.energy_mev), eta, phi], -1)
    rng = np.random.default_rng(seed)
    x = layer_vector(data.e_layer, data.n_layer, data.centre, p.energy_mev, rng,
                     data.flow_extra(cfg, np.arange(len(data)), rng))
    std = num.std(0)
    std = np.where(std > CONSTANT_STD, std + 1e-6, 1.0)  # a condition that does not vary
    return {"context_mean": num.mean(0).tolist(), "context_std": std.tolist(),
            "flow_mean": x.mean(0).tolist(), "flow_std": (x.std(0) + 1e-3).tolist(),
            "flow_min": x.min(0).tolist(), "flow_max": x.max(0).tolist(),
            "response_bound": response_bound(data.e_layer.sum(1), p.energy_mev),
            "particles": particles,
            "ranges": TrainingRanges.of(p).to_dict()}
