"""Shower geometry shared by the models and the validation: where a primary's straight line
crosses the layers, offsets of cells from that axis, depth in X0, dE/dx weights.

Units: mm, MeV, X0. ``line_at`` uses operators only, so one implementation serves numpy arrays
and torch tensors (the ONNX-exported generators trace it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastshower.geometry.materials import material

if TYPE_CHECKING:  # detector.py uses line_at: no import back at run time
    from fastshower.geometry.detector import Geometry


def layer_z(geom: Geometry) -> np.ndarray:
    """(L,) z of every layer's sensor plane in mm."""
    return np.array([lay.z for lay in geom.layers])


def depth_x0(geom: Geometry) -> np.ndarray:
    """Depth of each layer's sensor in radiation lengths."""
    return np.array([lay.depth_x0 for lay in geom.layers])


def dedx_weights(geom: Geometry) -> np.ndarray:
    """Per-cell calibration weight: MIP energy loss in the absorbers in front of the cell's layer
    over the MIP energy loss in the cell's own sensor (the dE/dx method of HGCAL), plus one.

    Summing cell energy times weight estimates the energy deposited in the whole calorimeter,
    so that layers behind thicker absorbers count more.
    """
    absorber = np.array([sum(t * material(m).mip_mev_per_mm for m, t in lay.absorbers)
                         for lay in geom.layers])
    return absorber[geom.cells["layer"]] / geom.mip_energy + 1.0


def centroid_depth(profile, depth):
    """Energy-weighted mean depth per shower (X0) of (n, L) layer energies: tracks the shower
    maximum. Works on numpy arrays and torch tensors."""
    return (profile @ depth) / profile.sum(1).clip(min=1e-12)


def line_at(z, x0, y0, z0, dx, dy, dz):
    """(x, y) where lines from (x0, y0, z0) along (dx, dy, dz) cross the planes ``z``
    (broadcasting: e.g. z (1, L) with the others (n, 1) gives (n, L)). numpy or torch."""
    steps = (z - z0) / dz
    return x0 + steps * dx, y0 + steps * dy


def axis_points(primaries, geom: Geometry) -> np.ndarray:
    """(n, L, 2) x, y (mm) where each primary's straight line crosses each layer's plane
    (``primaries``: a simhits.Primaries)."""
    pos, d = primaries.position_mm[:, None, :], primaries.direction[:, None, :]
    x, y = line_at(layer_z(geom)[None, :], *(pos[..., i] for i in range(3)),
                   *(d[..., i] for i in range(3)))
    return np.stack([x, y], -1)


def axis_offsets(batch, geom: Geometry) -> tuple[np.ndarray, ...]:
    """(shower index, cell id, energy, dx, dy) of every hit of a ShowerBatch, with (dx, dy) the
    cell centre's offset in mm from the shower axis in the cell's layer plane."""
    event, ids, energy = batch.flat()
    pos, d, c = batch.primaries.position_mm[event], batch.primaries.direction[event], geom.cells
    ax, ay = line_at(c["z"][ids], *pos.T, *d.T)
    return event, ids, energy, c["x"][ids] - ax, c["y"][ids] - ay
