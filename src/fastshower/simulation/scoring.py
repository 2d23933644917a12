"""Scoring: the options, and sensor steps (layer, x, y, time, energy) -> energy and
first-deposit time per cell for the 'steps' option.

Steps are assigned to cells by the geometry's vectorised lookup at the end of each event, at the
step's pre-step point (a step in a 0.1-0.3 mm sensor moves well under a millimetre sideways, so
its deposit goes to the cell that contains it). Deposits outside every cell are summed, not dropped.
"""

from __future__ import annotations

import numpy as np

from fastshower.geometry import Geometry

SCORING = {  # measured in benchmarks/geant4.py and docs/physics.md
    "cells": "cells are Geant4 volumes (placed prisms; replicas on a grid) scored in C++ "
             "(G4PSEnergyDeposit, G4PSEnergyDeposit3D); cell time = straight time of flight "
             "from the vertex to the cell centre",
    "steps": "every charged-particle sensor step goes to Python and is assigned to a cell by "
             "the geometry lookup (pre-step point); cell time = time of the first deposit",
    "none": "no scoring (timing reference)",
}


def aggregate_steps(geom: Geometry, layer: np.ndarray, x: np.ndarray, y: np.ndarray,
                    time: np.ndarray, energy: np.ndarray):
    """(cell ids, energy per cell in MeV, first-deposit time per cell in ns, lost energy MeV).

    Cells come out sorted by id; ``lost`` is the energy of steps outside every cell.
    """
    cell = geom.lookup(layer, x, y)
    inside = cell >= 0
    lost = float(energy[~inside].sum())
    _, cell, summed, first = merge_hits(np.zeros(int(inside.sum()), np.int64), cell[inside],
                                        energy[inside], time[inside], 1)
    return cell, summed, first, lost


def merge_hits(event: np.ndarray, cell: np.ndarray, energy: np.ndarray, time: np.ndarray,
               n_events: int):
    """Hits from several sources -> one per (event, cell): energies summed, earliest time.
    Returns (hits per event, cell ids, energies, times), sorted by event then cell."""
    order = np.lexsort((time, cell, event))
    event, cell, energy, time = event[order], cell[order], energy[order], time[order]
    first = np.ones(len(cell), dtype=bool)
    first[1:] = (cell[1:] != cell[:-1]) | (event[1:] != event[:-1])
    starts = np.flatnonzero(first)
    summed = np.add.reduceat(energy, starts) if len(starts) else energy[:0]
    return (np.bincount(event[starts], minlength=n_events), cell[starts], summed, time[starts])
