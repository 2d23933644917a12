"""Synthetic G4PARTICLEXS neutron cross sections: what FTFP_BERT reads to run offline.

FTFP_BERT's neutron processes read ``neutron/{inel,el,cap}{Z}`` (energies 1e-11-20 MeV; Geant4
uses its compiled-in Glauber-Gribov model above 20 MeV, scaled to meet the file's last value).
Offline mode writes them from (approximations, named again in docs/physics.md):
- inelastic and elastic: Geant4's own compiled-in CHIPS neutron parametrisations (not bound in
  geant4_pybind; reached through the wheel's exported C++ symbols with ctypes, hence the pinned
  wheel), averaged over the natural isotopes, blended linearly into Glauber-Gribov between 10
  and 20 MeV so that Geant4's scale factor above 20 MeV is 1; isotopes CHIPS lacks take the
  nearest element's (see _isotope_inelastic);
- radiative capture: the 1/v law from the thermal (2200 m/s) absorption cross section of
  Sears (1992) as tabulated by the ``periodictable`` package; no resonances, no fast-neutron
  capture tail, and absorption by (n,p)/(n,alpha) counted as capture (matters for B, Li, N).
The pion response moved by at most 1.6 % (within its statistics) when these were scaled
(capture x3 and x1/3, elastic and inelastic +-30 %; benchmarks/hadron_physics.py,
docs/physics.md): the offline hadronic systematic, stated as <= 2 %.

``write_neutron_files`` must run once the particles have process managers (the CHIPS classes
build ions), i.e. from a physics constructor's ``ConstructProcess``: see g4app.physics.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
from pathlib import Path

import numpy as np

RECIPE = "neutron-xs-1: CHIPS el/inel blended into Glauber-Gribov 10-20 MeV; capture 1/v (Sears)"
ENERGIES_MEV = np.geomspace(1e-11, 20.0, 249)  # log-spaced: Geant4 reads a G4PhysicsLogVector
BLEND_MEV = (10.0, 20.0)
THERMAL_MEV = 2.53e-8  # 2200 m/s
NEUTRON_MASS_MEV = 939.56542
BARN_MM2 = 1e-22  # Geant4's internal area unit is mm^2
Z_MAX = 92
NEUTRON_PDG = 2112


def capture_barn(z: int, energy_mev: np.ndarray) -> np.ndarray:
    """Radiative capture cross section (barn): 1/v from the thermal absorption (Sears 1992)."""
    import periodictable

    thermal = periodictable.elements[z].neutron.absorption  # barn at 2200 m/s; None if unknown
    return (thermal or 0.0) * np.sqrt(THERMAL_MEV / energy_mev)


class _Geant4Symbols:
    """Geant4 cross-section classes that geant4_pybind does not bind, reached by ctypes."""

    def __init__(self):
        lib = ctypes.CDLL(importlib.util.find_spec("geant4_pybind").origin)
        malloc = ctypes.CDLL(None).malloc
        malloc.restype = ctypes.c_void_p

        def construct(mangled: str) -> int:
            this = malloc(1 << 14)  # more than any of these objects; freed by Geant4 at exit
            ctor = getattr(lib, mangled)
            ctor.argtypes = [ctypes.c_void_p]
            ctor(this)
            return this

        def method(mangled: str, *args):
            f = getattr(lib, mangled)
            f.argtypes, f.restype = [ctypes.c_void_p, *args], ctypes.c_double
            return f

        chips_args = (ctypes.c_double, ctypes.c_int, ctypes.c_int, ctypes.c_int)
        self.el = construct("_ZN23G4ChipsNeutronElasticXSC1Ev")
        self.inel = construct("_ZN25G4ChipsNeutronInelasticXSC1Ev")
        self.gg = construct("_ZN29G4ComponentGGHadronNucleusXscC1Ev")
        # GetChipsCrossSection(momentum MeV/c, Z, N (neutrons), pdg) -> mm^2
        self.chips_el = method("_ZN23G4ChipsNeutronElasticXS20GetChipsCrossSectionEdiii",
                               *chips_args)
        self.chips_inel = method("_ZN25G4ChipsNeutronInelasticXS20GetChipsCrossSectionEdiii",
                                 *chips_args)
        # Get{Elastic,Inelastic}ElementCrossSection(particle, kinetic energy MeV, Z, A) -> mm^2
        gg_args = (ctypes.c_void_p, ctypes.c_double, ctypes.c_int, ctypes.c_double)
        self.gg_el = method("_ZN29G4ComponentGGHadronNucleusXsc29GetElasticElementCrossSection"
                            "EPK20G4ParticleDefinitiondid", *gg_args)
        self.gg_inel = method("_ZN29G4ComponentGGHadronNucleusXsc31GetInelasticElementCrossSection"
                              "EPK20G4ParticleDefinitiondid", *gg_args)
        neutron = lib._ZN9G4Neutron7NeutronEv
        neutron.restype = ctypes.c_void_p
        self.neutron = neutron()


def _chips(g4sym: _Geant4Symbols, kind: str, z: int, a: int, momentum: np.ndarray
           ) -> np.ndarray:
    f, obj = {"el": (g4sym.chips_el, g4sym.el), "inel": (g4sym.chips_inel, g4sym.inel)}[kind]
    return np.array([f(obj, p, z, a - z, NEUTRON_PDG) for p in momentum])


def _isotope_inelastic(g4sym: _Geant4Symbols, nist, z: int, a: int, momentum: np.ndarray
                       ) -> np.ndarray:
    """CHIPS inelastic cross section of isotope (Z, A). CHIPS lacks some isotopes (Tc, Pm,
    159Tb, 180Ta, Z >= 84; it then returns ~1e-3 of Glauber-Gribov at 10 MeV, where every
    parametrised nucleus but 4He is within 0.5-1.7 of it): those get the nearest element's most
    abundant isotope, scaled to their own Glauber-Gribov value at 10 MeV."""
    i10 = int(np.searchsorted(ENERGIES_MEV, BLEND_MEV[0]))
    t10 = float(ENERGIES_MEV[i10])
    for z2 in sorted(range(max(z - 6, 3), min(z + 7, Z_MAX + 1)), key=lambda v: abs(v - z)):
        first, count = nist.GetNistFirstIsotopeN(z2), nist.GetNumberOfNistIsotopes(z2)
        a2 = a if z2 == z else max(range(first, first + count),
                                   key=lambda n: nist.GetIsotopeAbundance(z2, n))
        xs = _chips(g4sym, "inel", z2, a2, momentum)
        glauber = g4sym.gg_inel(g4sym.gg, g4sym.neutron, t10, z2, float(a2))
        if z < 3 or xs[i10] > 0.05 * glauber:
            return xs * (g4sym.gg_inel(g4sym.gg, g4sym.neutron, t10, z, float(a)) / glauber
                         if z2 != z else 1.0)
    raise RuntimeError(f"no CHIPS inelastic parametrisation near Z={z}")


def _element_xs(g4sym: _Geant4Symbols, nist, z: int, scale: dict[str, float]
                ) -> dict[str, np.ndarray]:
    """Elastic, inelastic and capture cross sections (mm^2) of natural element Z on the grid;
    ``scale`` multiplies a kind's own part (below the blend into Glauber-Gribov)."""
    t = ENERGIES_MEV
    momentum = np.sqrt(t * (t + 2 * NEUTRON_MASS_MEV))
    first, count = nist.GetNistFirstIsotopeN(z), nist.GetNumberOfNistIsotopes(z)
    isotopes = [(a, nist.GetIsotopeAbundance(z, a)) for a in range(first, first + count)]
    isotopes = [(a, w) for a, w in isotopes if w > 0] or [(round(nist.GetAtomicMassAmu(z)), 1.0)]
    total = sum(w for _, w in isotopes)
    chips = {"el": sum(w * _chips(g4sym, "el", z, a, momentum) for a, w in isotopes) / total,
             "inel": sum(w * _isotope_inelastic(g4sym, nist, z, a, momentum)
                         for a, w in isotopes) / total}
    mass = nist.GetAtomicMassAmu(z)
    w_gg = np.clip((t - BLEND_MEV[0]) / (BLEND_MEV[1] - BLEND_MEV[0]), 0.0, 1.0)
    out = {}
    for kind, gg in (("el", g4sym.gg_el), ("inel", g4sym.gg_inel)):
        glauber = np.array([gg(g4sym.gg, g4sym.neutron, e, z, mass) if w > 0 else 0.0
                            for e, w in zip(t, w_gg, strict=True)])
        out[kind] = (1 - w_gg) * scale.get(kind, 1.0) * chips[kind] + w_gg * glauber
    out["cap"] = scale.get("cap", 1.0) * capture_barn(z, t) * BARN_MM2
    return out


def _vector_text(e: np.ndarray, v: np.ndarray) -> str:
    """A G4PhysicsVector in Geant4's ascii layout."""
    head = f"{e[0]:.10e} {e[-1]:.10e} {len(e)}\n{len(e)}\n"
    return head + "\n".join(f"{a:.10e} {b:.8e}" for a, b in zip(e, v, strict=True)) + "\n"


def write_neutron_files(g4, folder: Path, scale: dict[str, float] | None = None) -> int:
    """Write ``folder/neutron/{el,inel,cap}{Z}`` for Z = 1-92; returns the number of files.

    ``scale`` ({"el"|"inel"|"cap": factor}) varies the synthetic data for systematic scans."""
    scale = scale or {}
    if set(scale) - {"el", "inel", "cap"}:
        raise ValueError(f"neutron data scale keys are el, inel, cap, not {sorted(scale)}")
    target = Path(folder) / "neutron"
    target.mkdir(parents=True, exist_ok=True)
    g4sym = _Geant4Symbols()
    nist = g4.G4NistManager.Instance()
    for z in range(1, Z_MAX + 1):
        with contextlib.redirect_stdout(io.StringIO()):  # CHIPS warns of isotopes it lacks
            element = _element_xs(g4sym, nist, z, scale)
        for kind, xs in element.items():
            if not np.all(np.isfinite(xs)) or np.any(xs < 0):
                raise RuntimeError(f"neutron {kind} cross section of Z={z} is not finite/positive")
            (target / f"{kind}{z}").write_text(_vector_text(ENERGIES_MEV, xs))
    return 3 * Z_MAX
