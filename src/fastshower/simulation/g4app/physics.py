"""Physics lists: offline (synthetic data, EM or FTFP_BERT) or the full reference list."""

from __future__ import annotations

from pathlib import Path

import geant4_pybind as g4

from fastshower.simulation.neutron_xs import write_neutron_files

EM = {0: g4.G4EmStandardPhysics, 1: g4.G4EmStandardPhysics_option1}


def physics_list_name(mode: str, em_option: int, hadronic: bool) -> str:
    """The name recorded in every file for the list ``physics_list`` builds."""
    if mode == "full" or hadronic:
        return "FTFP_BERT" + ("" if em_option == 0 else "_EMV") + (
            "" if mode == "full" else " (offline data)")
    return f"G4EmStandardPhysics{'' if em_option == 0 else '_option1'}+G4DecayPhysics"


class NeutronData(g4.G4VPhysicsConstructor):
    """Writes the synthetic G4PARTICLEXS neutron files when the processes are built: after the
    particles have process managers (the CHIPS classes build ions), before the constructors
    registered after it read the files."""

    def __init__(self, folder: Path, scale: dict[str, float] | None):
        super().__init__("fastshower-neutron-data")
        self.folder, self.scale = folder, scale

    def ConstructParticle(self) -> None:  # noqa: N802 - Geant4's name
        pass

    def ConstructProcess(self) -> None:  # noqa: N802 - Geant4's name
        write_neutron_files(g4, self.folder, self.scale)


class OfflinePhysics(g4.G4VModularPhysicsList):
    """Offline mode: the stock EM constructor (opt0 or opt1) and decays; with ``hadronic``
    FTFP_BERT's own constructors on synthetic neutron data (``particlexs``: the folder)."""

    def __init__(self, em_option: int, hadronic: bool = False, particlexs: Path | None = None,
                 xs_scale: dict[str, float] | None = None):
        super().__init__()
        self.SetVerboseLevel(0)
        em, decays = EM[em_option](), g4.G4DecayPhysics()
        constructors = ([NeutronData(particlexs, xs_scale), em, g4.G4EmExtraPhysics(), decays,
                         g4.G4HadronElasticPhysics(), g4.G4HadronPhysicsFTFP_BERT(),
                         g4.G4StoppingPhysics(), g4.G4IonPhysics(), g4.G4NeutronTrackingCut()]
                        if hadronic  # FTFP_BERT.cc's list, the neutron files written first
                        else [em, decays])
        for constructor in constructors:
            self.RegisterPhysics(constructor)
        self.constructors = constructors  # Geant4 holds raw pointers: keep them alive
        if hadronic:  # the compiled-in photonuclear cross section, not G4PARTICLEXS gamma files
            g4.G4UImanager.GetUIpointer().ApplyCommand(
                "/physics_lists/em/UseGammaNuclearXS false")


def full_physics(em_option: int):
    """Full mode: FTFP_BERT with the chosen EM option (needs the Geant4 datasets)."""
    name = "FTFP_BERT" + {0: "", 1: "_EMV"}[em_option]
    return g4.G4PhysListFactory(0).GetReferencePhysList(name)
