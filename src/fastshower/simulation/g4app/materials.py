"""Geant4 materials from the geometry's names: NIST by name, or mixtures by mass fraction."""

from __future__ import annotations

import geant4_pybind as g4

from fastshower.geometry.materials import material


def g4_material(name: str):
    """A Geant4 material: NIST by name, or a mixture of NIST materials by mass fraction."""
    nist = g4.G4NistManager.Instance()
    found = g4.G4Material.GetMaterial(name, False)
    if found is not None:
        return found
    if name.startswith("G4_"):
        return nist.FindOrBuildMaterial(name)
    m = material(name)
    mix = g4.G4Material(name, m.density * g4.g / g4.cm3, len(m.components))
    for component, fraction in m.components:
        mix.AddMaterial(nist.FindOrBuildMaterial(component), fraction)
    return mix
