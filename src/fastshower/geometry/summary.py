"""A geometry in numbers: cells per layer and type, edges by kind, depth per layer."""

from __future__ import annotations

import numpy as np

from fastshower.geometry.detector import Geometry
from fastshower.geometry.neighbours import EDGE_KINDS


def summary(geom: Geometry) -> dict:
    """Plain-Python summary (JSON-ready) of a geometry."""
    n_layers = len(geom.layers)
    per_type = np.zeros((n_layers, 2), dtype=np.int64)
    np.add.at(per_type, (geom.cells["layer"], geom.cells["type"]), 1)
    edges = np.bincount(geom.edge_kind, minlength=len(EDGE_KINDS))
    return {
        "builder": geom.builder,
        "hash": geom.hash,
        "n_cells": geom.n_cells,
        "edges_by_kind": {EDGE_KINDS[k]: int(n) for k, n in enumerate(edges)},
        "layers": [
            {"index": lay.index, "section": lay.section, "z": lay.z,
             "depth_x0": lay.depth_x0, "depth_lambda": lay.depth_lambda,
             "silicon": int(per_type[lay.index, 0]), "scintillator": int(per_type[lay.index, 1])}
            for lay in geom.layers
        ],
    }
