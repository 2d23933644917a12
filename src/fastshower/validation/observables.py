"""Shower observables, vectorised over events: visible energy, longitudinal profile, depths.

Inputs are a ShowerBatch and the Geometry it was made with; energies in MeV, depths in X0.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from fastshower.geometry import Geometry
from fastshower.simhits import ShowerBatch

MIP_SI_300UM = 0.0845  # MeV: most probable deposit of a MIP crossing 300 um of silicon


def visible_energy(batch: ShowerBatch) -> np.ndarray:
    """Energy in all cells per shower (MeV)."""
    return ak.to_numpy(ak.sum(batch.cell_energy, axis=1))


def layer_energies(batch: ShowerBatch, geom: Geometry) -> np.ndarray:
    """(n_showers, n_layers) energy per layer in MeV (the longitudinal profile)."""
    counts = ak.to_numpy(ak.num(batch.cell_id))
    ids = ak.to_numpy(ak.flatten(batch.cell_id)).astype(np.int64)
    energy = ak.to_numpy(ak.flatten(batch.cell_energy)).astype(np.float64)
    event = np.repeat(np.arange(len(counts)), counts)
    out = np.zeros((len(counts), len(geom.layers)))
    np.add.at(out, (event, geom.cells["layer"][ids]), energy)
    return out


def depth_x0(geom: Geometry) -> np.ndarray:
    """Depth of each layer's sensor in radiation lengths."""
    return np.array([lay.depth_x0 for lay in geom.layers])


def centroid_depth(profile: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Energy-weighted mean depth per shower (X0): tracks the shower maximum."""
    return profile @ depth / np.maximum(profile.sum(axis=1), 1e-12)


def start_layer(profile: np.ndarray, threshold: float = 5 * MIP_SI_300UM) -> np.ndarray:
    """First layer with more than ``threshold`` MeV (default: five MIPs); -1 if none."""
    above = profile > threshold
    return np.where(above.any(axis=1), above.argmax(axis=1), -1)
