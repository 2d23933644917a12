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

Modules: ``network`` (the two networks and the cell graphs), ``sampler`` (generation as one
tensor program: what ``sample`` runs and ONNX export traces), ``data`` (training data).

Approximations, named: every layer-level value the flow draws is clipped to the training
sample's range of that value (+5 %), which cuts the flow's rare far-tail outliers; given the
layer-level quantities, cells are independent apart from the fixed hit count and energy sum of
their layer; drawing N cells with probability proportional
to their odds approximates the conditional Bernoulli law; hit times are times of flight.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fastshower.geometry import Geometry
from fastshower.geometry.showers import depth_x0
from fastshower.models.base import NetworkGenerator
from fastshower.models.flowgnn.data import TrainingData, fit_norms, layer_vector
from fastshower.models.flowgnn.network import (
    OFFSET_SCALE,
    CellNet,
    FlowGNNConfig,
    LayerFlow,
    LayerGraphs,
)
from fastshower.models.flowgnn.sampler import FlowGNNSampler
from fastshower.models.showers import particle_index, particle_names
from fastshower.simhits import Primaries, ShowerBatch

__all__ = ["FlowGNN", "FlowGNNConfig", "FlowGNNSampler", "LayerFlowGenerator", "TrainingData",
           "fit_norms", "layer_vector"]


class LayerFlowGenerator(NetworkGenerator):
    """What generators built on the layer-level flow share: the flow and the normalisations
    fitted on the training sample, conditions as the flow's context, model files of (config,
    particles, norms, weights). Subclasses set ``config_type`` and add their second stage."""

    questions: ClassVar[dict[str, str]] = {
        "condition_encoding": "ln E, eta, phi standardised; particle one-hot",
        "model_format": "PyTorch file (torch.load weights_only: tensors and plain data)"}

    def __init__(self, geom: Geometry, particles: list[str], cfg, norms: dict):
        super().__init__(geom, particles, cfg, norms)
        self.n_layers = len(geom.layers)
        self.context_dim = 3 + len(particles)
        self.flow = LayerFlow(len(norms["flow_mean"]), self.context_dim, cfg)
        self.layer_sizes = np.bincount(geom.cells["layer"], minlength=self.n_layers)
        self.depth = depth_x0(geom).astype(np.float32)

    @classmethod
    def build(cls, data: TrainingData, geom: Geometry, cfg, seed: int) -> LayerFlowGenerator:
        """A new model with normalisations fitted to the training data (weights from the
        current torch seed)."""
        particles = particle_names(data.primaries.pdg)
        return cls(geom, particles, cfg, fit_norms(data, particles, cfg, seed))

    def context(self, primaries: Primaries) -> torch.Tensor:
        """(n, C): standardised ln E, eta, phi, particle one-hot."""
        eta, phi = primaries.eta_phi()
        m, s = self.norms["context_mean"], self.norms["context_std"]
        num = (np.stack([np.log(primaries.energy_mev), eta, phi], -1) - m) / s
        onehot = np.eye(len(self.particles))[particle_index(primaries.pdg, self.particles)]
        return torch.from_numpy(np.concatenate([num, onehot], -1).astype(np.float32))


class FlowGNN(LayerFlowGenerator):
    """The two stages plus the normalisation constants fitted on the training sample."""

    name = "flowgnn"
    training = "steps"
    config_type = FlowGNNConfig
    questions: ClassVar[dict[str, str]] = {
        **LayerFlowGenerator.questions,
        "data_structure": "showers as cells of the geometry (node = cell); a layer-level "
                          "vector ln(E_l / E), ln(1 + N_l) per layer and the centre, standardised",
        "tuning": "maximum likelihood (flow NLL, cell BCE and energy NLL); per-stage early "
                  "stopping on validation losses; separation power and FPD logged"}

    def __init__(self, geom: Geometry, particles: list[str], cfg: FlowGNNConfig, norms: dict):
        super().__init__(geom, particles, cfg, norms)
        self.cells = CellNet(12 + self.context_dim, cfg)
        self.graphs = LayerGraphs(geom)

    # ---- stage 2 node features ---------------------------------------------------------------
    def group_inputs(self, layer: int, events: np.ndarray, axis, centre, e_layer, n_layer, ctx,
                     mean_depth) -> torch.Tensor:
        """(N, P, F) features of the N cells of ``layer`` for the P showers ``events``: offset
        from the shower axis, cell shape, the layer-level quantities, the conditions."""
        ids = self.graphs.ids(layer)
        c = self.geom.cells
        dx = (c["x"][ids, None] - axis[None, events, layer, 0] - centre[None, events, 0])
        dy = (c["y"][ids, None] - axis[None, events, layer, 1] - centre[None, events, 1])
        dx, dy = dx / OFFSET_SCALE, dy / OFFSET_SCALE
        r = np.hypot(dx, dy)
        e_l, n_hits = e_layer[events, layer], n_layer[events, layer]
        depth = self.depth[layer]
        per_pair = np.concatenate([np.stack([
            np.log(np.maximum(e_l, 1e-3)) / 5.0, np.log1p(n_hits) / 5.0,
            np.log(np.maximum(e_l / np.maximum(n_hits, 1), 1e-3)),
            np.full(len(events), depth / 10.0), (depth - mean_depth[events]) / 5.0], -1),
            ctx[events]], -1)
        n, p = r.shape
        x = np.concatenate([np.stack([dx, dy, r, np.log(r + 0.05)], -1),
                            np.broadcast_to(self.graphs.static[ids, None], (n, p, 3)),
                            np.broadcast_to(per_pair[None], (n, p, per_pair.shape[1]))], -1)
        return torch.from_numpy(x.astype(np.float32))

    # ---- training (driven by training.loop: the model owns its loss) ----------------------
    loss_weights: ClassVar[dict[str, float]] = {"flow_nll": 1.0, "cell_bce": 1.0,
                                                "cell_nll": 0.1}
    stages: ClassVar[dict[str, tuple[str, ...]]] = {"flow": ("flow_nll",),
                                                    "cells": ("cell_bce", "cell_nll")}

    @classmethod
    def training_data(cls, batch: ShowerBatch, geom: Geometry) -> TrainingData:
        return TrainingData(batch, geom)

    def forward(self, data: TrainingData, rng: np.random.Generator, scale: int = 1,
                shard: tuple[int, int] = (0, 1)) -> dict[str, tuple[torch.Tensor, float]]:
        """Loss terms of one step as (sum, count) over this rank's share of the global
        mini-batch (``scale`` x the configured size, drawn whole from ``rng`` on every rank):
        the flow's NLL per feature, the cells' hit BCE and the hits' log-energy NLL."""
        rank, world = shard
        index = rng.choice(len(data), min(self.cfg.flow_batch * scale, len(data)),
                           replace=False)
        x, c = data.flow_batch(self, index, rng)
        groups = data.cell_batch(self, self.cfg.cell_pairs * scale, rng, shard)
        x, c = x[rank::world], c[rank::world]
        flow = -self.flow.log_prob(x, c).sum()
        bce, nll, n_cells, n_hits = self.cell_sums(groups)
        return {"flow_nll": (flow, x.numel()), "cell_bce": (bce, n_cells),
                "cell_nll": (nll, n_hits)}

    def cell_sums(self, groups: list) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(BCE sum of hit / no hit, Gaussian NLL sum of ln(e / mean hit energy) for hits,
        cells, hits) over groups of (layer, inputs (N, P, F), hit flags (N, P), ln energies)."""
        bce, nll, n_cells, n_hits = torch.zeros(()), torch.zeros(()), 0, 0
        for layer, inputs, is_hit, log_e in groups:
            out = self.cells(inputs, self.graphs.adj[layer])
            bce = bce + nn.functional.binary_cross_entropy_with_logits(
                out[..., 0], is_hit, reduction="sum")
            hit = is_hit > 0
            mu, log_sigma = out[..., 1][hit], out[..., 2][hit].clamp(-4, 2)
            nll = nll + (log_sigma + 0.5 * ((log_e - mu) / log_sigma.exp()) ** 2).sum()
            n_cells, n_hits = n_cells + is_hit.numel(), n_hits + int(hit.sum())
        return bce, nll, n_cells, n_hits

    # ---- generation --------------------------------------------------------------------------
    def export_module(self) -> FlowGNNSampler:
        """The generation program (shares this model's networks): ONNX export traces it."""
        if "_sampler" not in self.__dict__:  # plain attribute: not a registered submodule
            self.__dict__["_sampler"] = FlowGNNSampler(self).eval()
        return self.__dict__["_sampler"]

    # ---- persistence -------------------------------------------------------------------------

