"""Shower observables, vectorised over events: energies, profiles, depths, widths, hits.

Inputs are a ShowerBatch and the Geometry it was made with. Energies in MeV, lengths in mm,
depths in X0. The shower axis is the primary's straight line from its vertex; transverse
distances are measured in each layer's plane.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_offsets, centroid_depth, dedx_weights, depth_x0
from fastshower.simhits import ShowerBatch

MIP_SI_300UM = 0.0845  # MeV: most probable deposit of a MIP crossing 300 um of silicon
CORE_RADIUS = 20.0  # mm: "core" energy fraction radius
RADIAL_EDGES = np.array([0, 5, 10, 15, 20, 30, 40, 60, 80, 120, 160], dtype=np.float64)


def visible_energy(batch: ShowerBatch) -> np.ndarray:
    """Energy in all cells per shower (MeV)."""
    return ak.to_numpy(ak.sum(batch.cell_energy, axis=1))


def layer_energies(batch: ShowerBatch, geom: Geometry) -> np.ndarray:
    """(n_showers, n_layers) energy per layer in MeV (the longitudinal profile)."""
    event, ids, energy = batch.flat()
    out = np.zeros((len(batch), len(geom.layers)))
    np.add.at(out, (event, geom.cells["layer"][ids]), energy)
    return out






def weighted_energy(batch: ShowerBatch, weights: np.ndarray) -> np.ndarray:
    """Sum over cells of energy times per-cell weight, per shower (MeV)."""
    event, ids, energy = batch.flat()
    return np.bincount(event, weights=energy * weights[ids], minlength=len(batch))




def start_layer(profile: np.ndarray, threshold: float = 5 * MIP_SI_300UM) -> np.ndarray:
    """First layer with more than ``threshold`` MeV (default: five MIPs); -1 if none."""
    above = profile > threshold
    return np.where(above.any(axis=1), above.argmax(axis=1), -1)




def radial_profile(batch: ShowerBatch, geom: Geometry,
                   edges: np.ndarray = RADIAL_EDGES) -> np.ndarray:
    """(n_showers, n_bins) energy in rings around the shower axis (MeV)."""
    event, _, energy, dx, dy = axis_offsets(batch, geom)
    r_bin = np.digitize(np.hypot(dx, dy), edges) - 1
    ok = (r_bin >= 0) & (r_bin < len(edges) - 1)
    out = np.zeros((len(batch), len(edges) - 1))
    np.add.at(out, (event[ok], r_bin[ok]), energy[ok])
    return out


def high_level(batch: ShowerBatch, geom: Geometry, threshold_mip: float = 0.5) -> dict:
    """Per-shower scalar observables a calorimeter physicist checks first.

    Hits are counted above ``threshold_mip`` times the MIP energy of each cell's sensor.
    """
    n = len(batch)
    e_inc = batch.primaries.energy_mev
    event, ids, energy, dx, dy = axis_offsets(batch, geom)
    profile = np.zeros((n, len(geom.layers)))
    np.add.at(profile, (event, geom.cells["layer"][ids]), energy)
    e_vis = profile.sum(axis=1)
    safe = np.maximum(e_vis, 1e-12)
    r2 = dx**2 + dy**2
    above = energy > threshold_mip * geom.mip_energy[ids]
    return {
        "e_vis": e_vis,
        "response": e_vis / e_inc,
        "e_dedx_over_e_inc": weighted_energy(batch, dedx_weights(geom)) / e_inc,
        "n_hits": np.bincount(event[above], minlength=n).astype(np.float64),
        "centroid_depth_x0": centroid_depth(profile, depth_x0(geom)),
        "start_layer": start_layer(profile).astype(np.float64),
        "max_layer": profile.argmax(axis=1).astype(np.float64),
        "centre_x": np.bincount(event, weights=energy * dx, minlength=n) / safe,
        "centre_y": np.bincount(event, weights=energy * dy, minlength=n) / safe,
        "width_r": np.sqrt(np.bincount(event, weights=energy * r2, minlength=n) / safe),
        "core_fraction": np.bincount(event, weights=energy * (r2 < CORE_RADIUS**2),
                                     minlength=n) / safe,
    }
