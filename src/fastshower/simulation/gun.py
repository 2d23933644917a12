"""Particle gun: primary particles sampled up front as arrays (energy, vertex, direction).

Energies in MeV inside (the CLI takes GeV). Directions point from the interaction point along
(eta, phi) as in the experiment, along a fixed vector, or at a polar angle theta from the z axis
(a test-beam-like incidence on a calorimeter facing +z); vertices may be smeared, and may sit on
the line through an aim point instead of at the origin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.simhits import PARTICLES, Primaries, eta_phi_direction, theta_phi_direction

AIM_LEAD_MM = 100.0  # with an aim point, vertices sit this far before it along the line


class GunConfig(BaseModel):
    """What to shoot. Energies in GeV; angles in degrees; lengths in mm."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    particle: str = "e-"
    energy: list[float] = [10.0]
    spectrum: Literal["fixed", "list", "uniform", "log-uniform"] = "fixed"
    eta: tuple[float, float] = (2.0, 2.0)
    phi_deg: tuple[float, float] = (90.0, 90.0)
    direction: tuple[float, float, float] | None = None
    theta_deg: tuple[float, float] | None = None  # polar angle from +z, uniform; replaces eta
    aim_mm: tuple[float, float, float] | None = None  # lines through it, from AIM_LEAD_MM before
    vertex_sigma: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @field_validator("particle")
    @classmethod
    def _known_particle(cls, v: str) -> str:
        if v not in PARTICLES:
            raise ValueError(f"unknown particle {v!r}; choose one of {', '.join(PARTICLES)}")
        return v

    @model_validator(mode="after")
    def _check_energy(self) -> GunConfig:
        if not self.energy or min(self.energy) <= 0:
            raise ValueError("energies must be positive (GeV)")
        if self.spectrum in ("uniform", "log-uniform"):
            if len(self.energy) != 2:
                raise ValueError(f"a {self.spectrum} spectrum needs a range: two energies")
            if self.energy[0] >= self.energy[1]:
                raise ValueError(f"energy range reversed or empty: {self.energy[0]} to "
                                 f"{self.energy[1]} GeV")
        if self.spectrum == "fixed" and len(self.energy) != 1:
            raise ValueError("a fixed energy needs exactly one value; use spectrum 'list'")
        if self.direction is not None and not any(self.direction):
            raise ValueError("the direction vector must not be zero")
        if self.theta_deg is not None:
            if self.direction is not None:
                raise ValueError("give either a fixed direction or a polar angle theta, not both")
            if not 0 <= self.theta_deg[0] <= self.theta_deg[1] < 90:
                raise ValueError(f"theta must be a range within 0 to 90 degrees (from +z), not "
                                 f"{self.theta_deg[0]} to {self.theta_deg[1]}")
        if min(self.vertex_sigma) < 0:
            raise ValueError("vertex smearing widths must not be negative")
        for lo, hi, what in (self.eta + ("eta",), self.phi_deg + ("phi",)):
            if lo > hi:
                raise ValueError(f"{what} range reversed: {lo} to {hi}")
        return self

    @property
    def pdg(self) -> int:
        return PARTICLES[self.particle]


def sample_primaries(cfg: GunConfig, n: int, rng: np.random.Generator) -> Primaries:
    """n primaries drawn from the gun; the one place where GeV (the CLI's unit) become MeV."""
    e = np.asarray(cfg.energy, dtype=np.float64) * 1000.0
    if cfg.spectrum == "fixed":
        energy = np.full(n, e[0])
    elif cfg.spectrum == "list":
        energy = e[rng.integers(0, len(e), n)]
    elif cfg.spectrum == "uniform":
        energy = rng.uniform(e[0], e[1], n)
    else:
        energy = np.exp(rng.uniform(np.log(e[0]), np.log(e[1]), n))
    if cfg.direction is not None:
        d = np.asarray(cfg.direction, dtype=np.float64)
        direction = np.broadcast_to(d / np.linalg.norm(d), (n, 3)).copy()
    elif cfg.theta_deg is None:
        eta = rng.uniform(*cfg.eta, n)
        phi = np.deg2rad(rng.uniform(*cfg.phi_deg, n))
        direction = eta_phi_direction(eta, phi)
    else:
        theta = np.deg2rad(rng.uniform(*cfg.theta_deg, n))
        phi = np.deg2rad(rng.uniform(*cfg.phi_deg, n))
        direction = theta_phi_direction(theta, phi)
    vertex = rng.normal(0.0, 1.0, (n, 3)) * np.asarray(cfg.vertex_sigma)
    if cfg.aim_mm is not None:
        vertex += np.asarray(cfg.aim_mm) - AIM_LEAD_MM * direction
    return Primaries(np.full(n, cfg.pdg, dtype=np.int32), energy, vertex, direction)


def require_on_detector(geom: Geometry, primaries: Primaries) -> None:
    """Refuse primaries whose straight line misses the calorimeter (Geant4 or a model would
    give empty showers)."""
    position, direction = primaries.position_mm, primaries.direction
    missing = np.flatnonzero(geom.entry_cells(position, direction) < 0)
    if len(missing):
        i = missing[0]
        raise FastShowerError(
            f"{len(missing)} of {len(position)} primaries miss the calorimeter (e.g. from "
            f"{np.round(position[i], 1).tolist()} mm along {np.round(direction[i], 4).tolist()}): "
            "choose directions (--eta/--phi or --direction) that point into this geometry")
