"""User actions: the gun shooting pre-sampled primaries, per-event hits, leakage."""

from __future__ import annotations

import geant4_pybind as g4

from fastshower.simhits import Primaries
from fastshower.simulation.g4app.detector import Detector


class Gun(g4.G4VUserPrimaryGeneratorAction):
    """Shoots the pre-sampled primaries, one per event, in order."""

    def __init__(self, primaries: Primaries, particle: str):
        super().__init__()
        self.p = primaries
        self.gun = g4.G4ParticleGun(1)
        self.gun.SetParticleDefinition(g4.G4ParticleTable.GetParticleTable().FindParticle(particle))

    def GeneratePrimaries(self, event) -> None:
        i = event.GetEventID()
        p = self.p
        self.gun.SetParticleEnergy(float(p.energy_mev[i]))
        self.gun.SetParticlePosition(g4.G4ThreeVector(*map(float, p.position_mm[i])))
        self.gun.SetParticleMomentumDirection(g4.G4ThreeVector(*map(float, p.direction[i])))
        self.gun.GeneratePrimaryVertex(event)


class EventAction(g4.G4UserEventAction):
    """Hands each finished event's cell hits to a callback."""

    def __init__(self, detector: Detector, on_event):
        super().__init__()
        self.detector = detector
        self.on_event = on_event

    def EndOfEventAction(self, event) -> None:
        self.on_event(event.GetEventID(), self.detector.read_event(event))


class LeakageAction(g4.G4UserTrackingAction):
    """Sums the kinetic energy of tracks leaving the world (for containment studies only)."""

    def __init__(self):
        super().__init__()
        self.escaped = 0.0

    def PostUserTrackingAction(self, track) -> None:
        if track.GetNextVolume() is None:
            self.escaped += track.GetKineticEnergy()

    def take(self) -> float:
        out, self.escaped = self.escaped, 0.0
        return out


def quiet() -> None:
    g4.G4EmParameters.Instance().SetVerbose(0)
    ui = g4.G4UImanager.GetUIpointer()
    for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0",
                "/tracking/verbose 0", "/process/verbose 0", "/process/em/verbose 0",
                "/process/had/verbose 0"):
        ui.ApplyCommand(cmd)
