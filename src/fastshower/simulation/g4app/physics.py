"""Physics lists: the offline EM list (synthetic tables) or a full reference list."""

from __future__ import annotations

import geant4_pybind as g4


class EmPhysics(g4.G4VModularPhysicsList):
    """Offline mode: stock EM constructor (opt0 or opt1) plus decays; no hadronic physics."""

    def __init__(self, em_option: int):
        super().__init__()
        self.SetVerboseLevel(0)
        em = {0: g4.G4EmStandardPhysics, 1: g4.G4EmStandardPhysics_option1}[em_option]
        self.RegisterPhysics(em())
        self.RegisterPhysics(g4.G4DecayPhysics())


def full_physics(em_option: int):
    """Full mode: FTFP_BERT with the chosen EM option (needs the Geant4 datasets)."""
    name = "FTFP_BERT" + {0: "", 1: "_EMV"}[em_option]
    return g4.G4PhysListFactory(0).GetReferencePhysList(name)
