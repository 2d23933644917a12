"""Shower observables, vectorised over events: visible energy, longitudinal profile, depths.

Inputs are a ShowerBatch and the Geometry it was made with; energies in MeV, depths in X0.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from fastshower.geometry import Geometry
from fastshower.geometry.materials import material
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


def dedx_weights(geom: Geometry) -> np.ndarray:
    """Per-cell calibration weight: MIP energy loss in the absorbers in front of the cell's layer
    over the MIP energy loss in the cell's own sensor (the dE/dx method of HGCAL).

    Summing cell energy times weight estimates the energy deposited in the whole calorimeter,
    so that layers with thicker absorbers count more; divide by the mean of that sum over the
    incident energy (one number) to get a calibrated energy.
    """
    absorber = np.array([sum(t * material(m).mip_mev_per_mm for m, t in lay.absorbers)
                         for lay in geom.layers])
    c = geom.cells
    sensor = np.where(c["type"] == 0, material("G4_Si").mip_mev_per_mm,
                      material("G4_POLYSTYRENE").mip_mev_per_mm) * c["thickness"]
    return absorber[c["layer"]] / sensor + 1.0


def weighted_energy(batch: ShowerBatch, weights: np.ndarray) -> np.ndarray:
    """Sum over cells of energy times per-cell weight, per shower (MeV)."""
    ids = batch.cell_id
    w = ak.unflatten(weights[ak.to_numpy(ak.flatten(ids)).astype(np.int64)], ak.num(ids))
    return ak.to_numpy(ak.sum(batch.cell_energy * w, axis=1))


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
