"""Materials of the detector description: density, radiation and nuclear interaction lengths.

Names starting with ``G4_`` are Geant4 NIST materials; the others are mixtures of NIST materials
by mass fraction, built the same way by the Geant4 detector. Lengths come from the PDG tables
(Review of Particle Physics, atomic and nuclear properties), in g/cm^2.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastshower.errors import GeometryError


@dataclass(frozen=True)
class Material:
    """A material: density in g/cm^3, X0 and lambda_I in g/cm^2, minimum-ionisation dE/dx in
    MeV cm^2/g, optional mixture by mass."""

    name: str
    density: float
    x0_g_cm2: float
    lambda_g_cm2: float
    dedx_mip: float
    components: tuple[tuple[str, float], ...] = ()

    @property
    def x0_mm(self) -> float:
        """Radiation length in mm."""
        return 10.0 * self.x0_g_cm2 / self.density

    @property
    def mip_mev_per_mm(self) -> float:
        """Mean energy loss of a minimum-ionising particle, MeV per mm."""
        return 0.1 * self.dedx_mip * self.density

    @property
    def lambda_mm(self) -> float:
        """Nuclear interaction length in mm."""
        return 10.0 * self.lambda_g_cm2 / self.density


_NIST = {
    # name: (density g/cm3, X0 g/cm2, lambda_I g/cm2, MIP dE/dx MeV cm2/g)
    "G4_H": (8.375e-5, 63.04, 52.0, 4.103),
    "G4_C": (2.0, 42.70, 85.8, 1.742),
    "G4_O": (1.332e-3, 34.24, 90.2, 1.801),
    "G4_Si": (2.33, 21.82, 108.4, 1.664),
    "G4_Fe": (7.874, 13.84, 132.1, 1.451),
    "G4_Cu": (8.96, 12.86, 137.3, 1.403),
    "G4_W": (19.3, 6.76, 191.9, 1.145),
    "G4_Pb": (11.35, 6.37, 199.6, 1.122),
    "G4_AIR": (1.20479e-3, 36.62, 90.1, 1.815),
    "G4_STAINLESS-STEEL": (8.0, 13.92, 132.6, 1.46),
    "G4_POLYSTYRENE": (1.06, 43.79, 77.07, 1.936),
}

_MIXTURES = {
    # name: (density, ((NIST component, mass fraction), ...))
    # Copper-tungsten baseplates of the CE-E silicon modules (75 % W by mass).
    "CuW": (14.9, (("G4_W", 0.75), ("G4_Cu", 0.25))),
    # Printed-circuit boards (hexaboards): FR4, glass fibre in epoxy, bromine neglected.
    "PCB": (1.85, (("G4_O", 0.40), ("G4_Si", 0.25), ("G4_C", 0.30), ("G4_H", 0.05))),
}


def _mixture(name: str, density: float, components: tuple[tuple[str, float], ...]) -> Material:
    inv_x0 = sum(w / _NIST[c][1] for c, w in components)
    inv_lambda = sum(w / _NIST[c][2] for c, w in components)
    dedx = sum(w * _NIST[c][3] for c, w in components)
    return Material(name, density, 1.0 / inv_x0, 1.0 / inv_lambda, dedx, components)


MATERIALS: dict[str, Material] = {n: Material(n, *v) for n, v in _NIST.items()}
MATERIALS.update({n: _mixture(n, d, c) for n, (d, c) in _MIXTURES.items()})


def material(name: str) -> Material:
    """The material called ``name``; a clear error for an unknown one."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise GeometryError(
            f"unknown material {name!r}; known: {', '.join(sorted(MATERIALS))}"
        ) from None
