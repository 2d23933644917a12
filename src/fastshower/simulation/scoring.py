"""Scoring: sensor steps (layer, x, y, time, energy) -> energy and first-deposit time per cell.

Steps are assigned to cells by the geometry's vectorised lookup at the end of each event, at the
step's pre-step point (a step in a 0.1-0.3 mm sensor moves well under a millimetre sideways, so
its deposit goes to the cell that contains it). Deposits outside every cell are summed, not dropped.
"""

from __future__ import annotations

import numpy as np

from fastshower.geometry import Geometry


def aggregate_steps(geom: Geometry, layer: np.ndarray, x: np.ndarray, y: np.ndarray,
                    time: np.ndarray, energy: np.ndarray):
    """(cell ids, energy per cell in MeV, first-deposit time per cell in ns, lost energy MeV).

    Cells come out sorted by id; ``lost`` is the energy of steps outside every cell.
    """
    cell = geom.lookup(layer, x, y)
    inside = cell >= 0
    lost = float(energy[~inside].sum())
    cell, time, energy = cell[inside], time[inside], energy[inside]
    order = np.lexsort((time, cell))
    cell, time, energy = cell[order], time[order], energy[order]
    first = np.ones(len(cell), dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    starts = np.flatnonzero(first)
    if len(starts) == 0:
        return cell, energy, time, lost
    return cell[starts], np.add.reduceat(energy, starts), time[starts], lost
