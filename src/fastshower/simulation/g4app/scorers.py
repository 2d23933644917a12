"""Primitive scorers: sensor steps for the Python scoring, and the fast-simulation entry."""

from __future__ import annotations

import geant4_pybind as g4
import numpy as np


class StepRecorder(g4.G4VPrimitiveScorer):
    """Records every charged-particle sensor step with energy: (x, y, z, time, MeV).

    It is a primitive scorer so that a C++ filter can spare Python the neutral steps (photons
    cross a sensor without depositing: their processes make electrons whatever the cut).
    This runs for every charged step in a sensor, so it makes the fewest calls into Geant4 it
    can; the layer is found afterwards from z, vectorised.
    """

    def __init__(self, name: str):
        super().__init__(name, 0)
        self.steps: list[tuple] = []

    def ProcessHits(self, step, history) -> bool:
        edep = step.GetTotalEnergyDeposit()
        if edep <= 0.0:
            return False
        pre = step.GetPreStepPoint()
        p = pre.GetPosition()
        self.steps.append((p.x, p.y, p.z, pre.GetGlobalTime(), edep))
        return True

    def take(self) -> np.ndarray:
        """The event's steps as an (n, 5) array; clears the buffer."""
        out = np.array(self.steps, dtype=np.float64).reshape(-1, 5)
        self.steps = []
        return out


class ShowerEntry(g4.G4VPrimitiveScorer):
    """The fast-simulation hook: particles (Geant4 names ``particles``) entering the calorimeter
    that ``accept(pdg, MeV, dx, dy, dz)`` hands to the model are recorded at the calorimeter's
    front and stopped.

    Geant4's G4VFastSimulationModel is not bound in Python; a primitive scorer on a thin vacuum
    slab in front of the calorimeter is: a C++ particle filter spares Python every other
    particle, and Python runs once per such particle crossing the slab, not per step in the
    calorimeter. Records (pdg, kinetic MeV, x, y, z mm, dx, dy, dz, global time ns).
    """

    def __init__(self, name: str, accept, particles: tuple[str, ...] = ("e-", "e+", "gamma")):
        super().__init__(name, 0)
        self.accept, self.particles = accept, particles
        self.zside = 1
        self.entries: list[tuple] = []

    def ProcessHits(self, step, history) -> bool:
        pre = step.GetPreStepPoint()
        if pre.GetStepStatus() != g4.G4StepStatus.fGeomBoundary:
            return False
        d = pre.GetMomentumDirection()
        if d.z * self.zside <= 0:  # leaving the calorimeter (albedo): Geant4 goes on
            return False
        track = step.GetTrack()
        pdg, energy = track.GetDefinition().GetPDGEncoding(), pre.GetKineticEnergy()
        if not self.accept(pdg, energy, d.x, d.y, d.z):
            return False
        p = pre.GetPosition()
        self.entries.append((pdg, energy, p.x, p.y, p.z, d.x, d.y, d.z, pre.GetGlobalTime()))
        track.SetTrackStatus(g4.G4TrackStatus.fStopAndKill)
        return True

    def take(self) -> np.ndarray:
        """The event's stopped particles as an (n, 9) array; clears the buffer."""
        out = np.array(self.entries, dtype=np.float64).reshape(-1, 9)
        self.entries = []
        return out
