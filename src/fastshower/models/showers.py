"""What the generators share about showers: energy and hit count per layer, the shower's
transverse centre, particle indices, and generated hits -> ShowerBatch (the axis itself is in
geometry.showers).

Units: MeV, mm, ns. A "hit" is a cell above ``THRESHOLD_MIP`` times its sensor's MIP energy,
the threshold the validation suite counts hits with.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from fastshower.data.transform import TransformConfig, select_hits
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.geometry.showers import axis_offsets
from fastshower.simhits import PARTICLE_OF_PDG, PARTICLES, Primaries, ShowerBatch

THRESHOLD_MIP = 0.5
C_MM_PER_NS = 299.792458


def layer_summary(batch: ShowerBatch, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(n, L) energy per layer (MeV, all cells) and (n, L) hits per layer above threshold."""
    event, ids, energy = select_hits(batch, geom, TransformConfig(threshold_kev=0.0))
    layer = geom.cells["layer"][ids]
    shape = (len(batch), len(geom.layers))
    e_layer = np.zeros(shape)
    np.add.at(e_layer, (event, layer), energy)
    above = energy > THRESHOLD_MIP * geom.mip_energy[ids]
    n_layer = np.zeros(shape)
    np.add.at(n_layer, (event[above], layer[above]), 1.0)
    return e_layer, n_layer


def particle_names(pdg: np.ndarray) -> list[str]:
    """The sorted names of the particles among PDG ids (a sample's particles)."""
    return sorted(PARTICLE_OF_PDG[int(p)] for p in np.unique(pdg))


def particle_index(pdg: np.ndarray, particles: list[str]) -> np.ndarray:
    """Index of each PDG id in ``particles``; a clear error for a particle a model never saw."""
    known = np.array([PARTICLES[p] for p in particles])
    hit = pdg[:, None] == known[None, :]
    if not hit.any(axis=1).all():
        bad = int(pdg[~hit.any(axis=1)][0])
        raise FastShowerError(f"this model was trained on {', '.join(particles)}; it cannot "
                              f"generate {PARTICLE_OF_PDG.get(bad, bad)}")
    return hit.argmax(axis=1)


def shower_centre(batch: ShowerBatch, geom: Geometry, within_mm: float = np.inf) -> np.ndarray:
    """(n, 2) energy-weighted mean offset (mm) of the hits from the shower axis, of the hits
    within ``within_mm`` of it (0 where there are none)."""
    event, _, energy, dx, dy = axis_offsets(batch, geom)
    energy = np.where(dx * dx + dy * dy < within_mm**2, energy, 0.0)
    w = np.maximum(np.bincount(event, energy, len(batch)), 1e-12)
    return np.stack([np.bincount(event, energy * dx, len(batch)),
                     np.bincount(event, energy * dy, len(batch))], -1) / w[:, None]


def to_batch(primaries: Primaries, geom: Geometry, event: np.ndarray,
             ids: np.ndarray, energy: np.ndarray) -> ShowerBatch:
    """Generated hits -> ShowerBatch: duplicates summed, hits outside cells (id -1) dropped,
    sorted by cell id; time = straight time of flight from the vertex to the cell centre
    (an approximation: generators do not model the shower's time structure)."""
    n = len(primaries)
    ok = ids >= 0
    key = event[ok].astype(np.int64) * geom.n_cells + ids[ok]
    uniq, inverse = np.unique(key, return_inverse=True)
    e = np.bincount(inverse, weights=energy[ok]).astype(np.float32)
    ev, cid = uniq // geom.n_cells, uniq % geom.n_cells
    c, pos = geom.cells, primaries.position_mm
    dist = np.sqrt((c["x"][cid] - pos[ev, 0]) ** 2 + (c["y"][cid] - pos[ev, 1]) ** 2
                   + (c["z"][cid] - pos[ev, 2]) ** 2)
    counts = np.bincount(ev, minlength=n)
    return ShowerBatch(
        primaries=primaries,
        cell_id=ak.unflatten(cid.astype(np.int32), counts),
        cell_energy=ak.unflatten(e, counts),
        cell_time=ak.unflatten((dist / C_MM_PER_NS).astype(np.float32), counts),
        lost_energy=np.zeros(n, dtype=np.float32),
    )
