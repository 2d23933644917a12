"""ML showers inside a Geant4 run: the hybrid mode of `fastshower simulate --fast-model`.

Geant4 tracks every particle from the interaction point through the upstream material; the
particles the model knows (e+- and photons for the shipped models, pions for one trained on
them) that reach the calorimeter's front face inside the model's range (energy above
``min_energy``, direction inside its range) are stopped there by the ShowerEntry
scorer (simulation.g4app), and the model generates their showers, batched over many events,
into the same hit collection: the output file has Geant4's schema and primaries.

Approximations, named: a positron's shower is generated as an electron's of the same kinetic
energy (the models know e- and gamma; the annihilation adds 1 MeV); a stopped particle's
shower axis is its straight line from the entry point; hit times of generated showers are the
entry time plus the straight time of flight to the cell.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.inference.generate import load_generator
from fastshower.simhits import PARTICLE_OF_PDG, PARTICLES, Primaries

POSITRON, ELECTRON = -11, 11


def fast_spec(model: str, backend: str = "torch", min_energy_gev: float = 1.0,
              particles: list[str] | None = None) -> dict:
    """What `simulate(fast=...)` takes for a hybrid run: the model, the particles it takes
    (default: all it knows) and the factory of its hook, named as "module:function" so that
    Geant4 jobs in other processes build it themselves (the simulation stage never imports
    inference)."""
    return {"model": str(model), "backend": backend, "min_energy_gev": float(min_energy_gev),
            "particles": None if particles is None else list(particles),
            "hook": f"{__name__}:make_hook"}


def make_hook(fast: dict, geom: Geometry) -> FastShowerHook:
    """The hook of a hybrid Geant4 job: the model on one core, as Geant4."""
    import torch

    torch.set_num_threads(1)
    generator = load_generator(fast["model"], geom, fast.get("backend", "torch"))
    return FastShowerHook(generator, fast.get("min_energy_gev", 1.0) * 1e3,
                          fast.get("particles"))


class FastShowerHook:
    """Decides which particles the model takes and turns them into hits."""

    def __init__(self, generator, min_energy_mev: float, particles: list[str] | None = None):
        self.generator, self.min_energy = generator, min_energy_mev
        names = list(generator.particles if particles is None else particles)
        unknown = sorted(set(names) - set(generator.particles))
        if unknown or not names:
            knows = ", ".join(generator.particles)
            raise FastShowerError(f"hybrid run: the model generates {knows}; it cannot take "
                                  f"{', '.join(unknown) or 'no particle'}")
        self.particles = {PARTICLES[p] for p in names}
        # what Geant4's C++ filter lets through to ``accept`` (positrons go as electrons)
        self.particle_names = tuple(names) + (("e+",) if "e-" in names and "e+" not in names
                                              else ())
        self.handed, self.handed_energy = 0, 0.0

    def accept(self, pdg: int, energy: float, dx: float, dy: float, dz: float) -> bool:
        """Called by Geant4 for every particle of ``particle_names`` entering the calorimeter."""
        pdg = ELECTRON if pdg == POSITRON else pdg
        if energy < self.min_energy or pdg not in self.particles:
            return False
        one = Primaries([pdg], [energy], np.zeros((1, 3)), [[dx, dy, dz]])
        return not self.generator.ranges.outside(one)

    def showers(self, entries: np.ndarray, event: np.ndarray, seed: int):
        """Stopped particles (n, 9) of events ``event`` (n,) -> hits (event, cell id, MeV, ns)."""
        if not len(entries):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        pdg = entries[:, 0].astype(np.int32)
        primaries = Primaries(np.where(pdg == POSITRON, ELECTRON, pdg), entries[:, 1],
                              entries[:, 2:5], entries[:, 5:8])
        batch = self.generator.sample(primaries, np.random.default_rng(seed))
        counts = ak.num(batch.cell_id).to_numpy()
        shower = np.repeat(np.arange(len(entries)), counts)
        self.handed += len(entries)
        self.handed_energy += float(entries[:, 1].sum())
        return (event[shower], ak.flatten(batch.cell_id).to_numpy().astype(np.int64),
                ak.flatten(batch.cell_energy).to_numpy().astype(np.float64),
                ak.flatten(batch.cell_time).to_numpy() + entries[shower, 8])

    def describe(self) -> str:
        names = ", ".join(PARTICLE_OF_PDG[p] for p in sorted(self.particles))
        return (f"{self.generator.name} for {names} (e+ as e-) above "
                f"{self.min_energy / 1e3:g} GeV at the calorimeter front")

