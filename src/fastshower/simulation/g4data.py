"""Geant4 data: the real datasets (full mode) or small synthetic EM tables (offline mode).

Offline mode runs the stock EM constructors on tables this module computes from analytic
theory, for exactly the elements of the detector, before the first BeamOn. Approximations
(named again in docs/physics.md):
- bremsstrahlung below 1 GeV (Seltzer-Berger tables): Bethe-Heitler with Tsai's screening
  functions, Coulomb correction and electron-electron term above 10 MeV (the form Geant4's own
  relativistic model uses above 1 GeV); non-relativistic Born cross section with the Elwert factor
  below 0.1 MeV; interpolated in ln T between;
- photoelectric effect: Geant4's compiled-in Sandia photo-absorption coefficients, one shell
  (the K edge) for the final state, no fluorescence;
- Rayleigh scattering: a one-parameter atomic form-factor model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALPHA = 1 / 137.035999
ELECTRON_MASS = 0.51099895  # MeV
RE2_MB = 79.4078  # classical electron radius squared, millibarn
BARN_MM2 = 1e-22  # Geant4 internal area unit is mm^2

# Seltzer-Berger grid: kappa = k / T (32 nodes) and T from 1 keV to 10 GeV (57 nodes, in ln T).
KAPPA = np.array([1e-12, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                  0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.99, 0.995,
                  0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0])
LOG_T = np.linspace(np.log(1e-3), np.log(1e4), 57)


@dataclass(frozen=True)
class DataSetup:
    """How Geant4 finds its data: mode 'full' (real datasets) or 'offline' (synthetic EM)."""

    mode: str
    data_dir: Path


def wheel_datasets() -> list[str]:
    """Dataset folder names (name + version) that the installed geant4_pybind wheel expects."""
    spec = importlib.util.find_spec("geant4_pybind")
    if spec is None or spec.origin is None:
        raise RuntimeError("geant4_pybind is not installed: pip install geant4_pybind")
    blob = Path(spec.origin).read_bytes()
    start = blob.find(b"DATASETS = [")
    found = re.findall(rb'"name": "([^"]+)",\s*"version": "([^"]+)"', blob[start:start + 8000])
    if start < 0 or not found:
        raise RuntimeError("cannot read the dataset list embedded in geant4_pybind")
    return [(n + v).decode() for n, v in found]


def _has_real_data(data_dir: Path) -> bool:
    return any((d / "brem_SB" / "br82").is_file() for d in data_dir.glob("G4EMLOW*"))


def _user_dir() -> str | None:
    """The folder the user points to for the Geant4 datasets, if any."""
    return os.environ.get("FASTSHOWER_G4DATA") or os.environ.get("GEANT4_DATA_DIR")


def setup_data(mode: str = "auto") -> DataSetup:
    """Prepare GEANT4_DATA_DIR; call before importing geant4_pybind.

    ``auto``: full mode when GEANT4_DATA_DIR holds real datasets, else offline.
    """
    if mode not in ("auto", "full", "offline"):
        raise ValueError(f"physics mode must be auto, full or offline, not {mode!r}")
    user_dir = _user_dir()
    if mode in ("auto", "full") and user_dir and _has_real_data(Path(user_dir)):
        os.environ["GEANT4_DATA_DIR"] = user_dir
        return DataSetup("full", Path(user_dir))
    if mode == "full":
        raise RuntimeError("full physics mode needs the Geant4 datasets: set GEANT4_DATA_DIR "
                           "to the folder holding G4EMLOW*, G4PARTICLEXS*, ...")
    root = Path(tempfile.mkdtemp(prefix="fastshower-g4data-"))
    for name in wheel_datasets():
        (root / name).mkdir()
    for ensdf in root.glob("G4ENSDFSTATE*"):
        (ensdf / "ENSDFSTATE.dat").touch()
    os.environ["FASTSHOWER_G4DATA"] = ""  # never treat the synthetic folder as real data
    os.environ["GEANT4_DATA_DIR"] = str(root)
    for var in ("G4LEDATA", "G4ENSDFSTATEDATA", "G4PARTICLEXSDATA"):
        os.environ.pop(var, None)
    return DataSetup("offline", root)


def resolved_mode(mode: str = "auto") -> str:
    """"full" or "offline": the physics mode a job asked for ``mode`` will run in (without
    importing Geant4)."""
    user_dir = _user_dir()
    full = mode != "offline" and bool(user_dir) and _has_real_data(Path(user_dir))
    if mode == "full" and not full:
        raise RuntimeError("full physics mode needs the Geant4 datasets: set GEANT4_DATA_DIR "
                           "to the folder holding G4EMLOW*, G4PARTICLEXS*, ...")
    return "full" if full else "offline"


def describe_mode(mode: str = "auto", em_option: int = 0) -> str:
    """One line naming the physics mode a job will run in (without importing Geant4)."""
    full = resolved_mode(mode) == "full"
    user_dir = _user_dir()
    em = "opt0" if em_option == 0 else f"opt{em_option}"
    if full:
        return f"Geant4 physics: FULL mode, FTFP_BERT with EM {em} (datasets in {user_dir})"
    return (f"Geant4 physics: OFFLINE mode, G4EmStandardPhysics {em} + decays on synthetic EM "
            "tables; for pions and protons FTFP_BERT's hadronic constructors on synthetic neutron "
            "data (see docs/physics.md)")


def particlexs_dir(setup: DataSetup) -> Path:
    """The G4PARTICLEXS folder of this setup (where offline mode writes neutron data)."""
    return next(setup.data_dir.glob("G4PARTICLEXS*"))


def cleanup(setup: DataSetup) -> None:
    if setup.mode == "offline":
        shutil.rmtree(setup.data_dir, ignore_errors=True)


# --- bremsstrahlung ------------------------------------------------------------------------
def coulomb_correction(z: float) -> float:
    a2 = (ALPHA * z) ** 2
    return a2 * (1 / (1 + a2) + 0.20206 - 0.0369 * a2 + 0.0083 * a2**2 - 0.002 * a2**3)


def chi_screened(z: float, kappa: np.ndarray, t: np.ndarray, coulomb: np.ndarray) -> np.ndarray:
    """beta^2 k dsigma/dk / Z^2 (mb): Bethe-Heitler with Tsai's screening functions.

    ``coulomb`` in [0, 1] weighs the Coulomb correction in.
    """
    e = t + ELECTRON_MASS
    y = np.clip(kappa * t / e, 0.0, 1 - 1e-12)
    one_my = 1 - y
    z13 = z ** (1 / 3)
    gam = 100 * ELECTRON_MASS * y / (e * one_my * z13)
    eps = gam / z13
    phi1 = (16.863 - 2 * np.log1p(0.311877 * gam**2) + 2.4 * np.exp(-0.9 * gam)
            + 1.6 * np.exp(-1.5 * gam))
    phi1m2 = 2 / (3 * (1 + 6.5 * gam + 6 * gam**2))
    psi1 = (24.34 - 2 * np.log1p(13.111641 * eps**2) + 2.8 * np.exp(-8 * eps)
            + 1.2 * np.exp(-29.2 * eps))
    psi1m2 = 2 / (3 * (1 + 40 * eps + 400 * eps**2))
    fz = np.log(z) / 3 + coulomb * coulomb_correction(z)
    dx = ((one_my + 0.75 * y**2) * ((0.25 * phi1 - fz) + (0.25 * psi1 - 2 * np.log(z) / 3) / z)
          + 0.125 * one_my * (phi1m2 + psi1m2 / z))
    beta2 = t * (t + 2 * ELECTRON_MASS) / e**2
    return beta2 * 16 / 3 * ALPHA * RE2_MB * np.maximum(dx, 0.0)


def chi_born_elwert(z: float, kappa: np.ndarray, t: np.ndarray) -> np.ndarray:
    """beta^2 k dsigma/dk / Z^2 (mb): non-relativistic Born (Bethe-Heitler) with Elwert factor."""
    k = np.minimum(kappa, 0.95) * t  # the tip kappa -> 1 is held at its kappa = 0.95 value
    p0 = np.sqrt(2 * t / ELECTRON_MASS)
    p = np.sqrt(2 * (t - k) / ELECTRON_MASS)
    # ln((p0 + p) / (p0 - p)) without cancellation: p0 - p = (p0^2 - p^2) / (p0 + p)
    log_term = np.log((p0 + p) ** 2 / (2 * k / ELECTRON_MASS))
    b0, b = p0 / np.sqrt(1 + p0**2), p / np.sqrt(1 + p**2)
    eta0, eta = 2 * np.pi * ALPHA * z / b0, 2 * np.pi * ALPHA * z / b
    elwert = b0 * -np.expm1(-eta0) / (b * -np.expm1(-eta))
    return 16 / 3 * ALPHA * RE2_MB * log_term * elwert


def brem_table(z: int) -> np.ndarray:
    """(57, 32) Seltzer-Berger-format table chi(kappa, T) for element Z."""
    kap, logt = np.meshgrid(KAPPA, LOG_T)
    t = np.exp(logt)
    coulomb = np.clip((t - 10.0) / 40.0, 0.0, 1.0)  # phased in between 10 and 50 MeV
    high = chi_screened(z, kap, t, coulomb)
    low = chi_born_elwert(z, np.maximum(kap, KAPPA[1]), t)
    w = np.clip(np.log(t / 0.1) / np.log(100.0), 0.0, 1.0)
    chi = (1 - w) * low + w * high
    # kappa -> 0: follow the screened shape from the first regular node (screening keeps it finite).
    ratio = chi_screened(z, KAPPA[0], t[:, 0], coulomb[:, 0]) / chi_screened(
        z, KAPPA[1], t[:, 0], coulomb[:, 0])
    chi[:, 0] = chi[:, 1] * np.maximum(ratio, 1.0)
    # The screened form fails at the very tip (kappa -> 1 at high T): keep a small floor there.
    chi = np.maximum(chi, 1e-3)
    # Rows must not increase with kappa: the sampler's majorant is the value at the low end.
    return np.minimum.accumulate(chi, axis=1)


def _write_brem(z: int, folder: Path) -> None:
    chi = brem_table(z)
    lines = [f"0 {len(KAPPA)} {len(LOG_T)}",
             " ".join(f"{v:.6e}" for v in KAPPA),
             " ".join(f"{v:.8f}" for v in LOG_T)]
    lines += [" ".join(f"{v:.6e}" for v in row) for row in chi]
    (folder / f"br{z}").write_text("\n".join(lines) + "\n")


# --- photoelectric effect and Rayleigh scattering ---------------------------------------------
def _vector_text(e: np.ndarray, v: np.ndarray) -> str:
    head = f"{e[0]:.8e} {e[-1]:.8e} {len(e)}\n{len(e)}\n"
    return head + "\n".join(f"{a:.8e} {b:.8e}" for a, b in zip(e, v, strict=True)) + "\n"


def _write_photoelectric(g4, z: int, material, folders: list[Path]) -> None:
    sandia = g4.G4SandiaTable(material)
    k_edge = g4.G4AtomicShells.GetBindingEnergy(z, 0)
    x0 = max(1.0, 10 * k_edge)  # MeV: above x0 the high-energy fit applies

    def sigma(e: float) -> float:  # barn
        c = g4.G4doubleVector([0.0] * 4)
        sandia.GetSandiaCofPerAtom(z, e, c)
        return sum(c[i] / e ** (i + 1) for i in range(4)) / BARN_MM2

    cof = g4.G4doubleVector([0.0] * 4)
    sandia.GetSandiaCofPerAtom(z, 10.0, cof)
    high = [c / BARN_MM2 for c in cof] + [0.0, 0.0]
    low_b = min(100e-6, k_edge / 2)
    fit = (f"2 1 {x0:.8e}\n"
           + f"{k_edge:.8e} " + " ".join(f"{a:.8e}" for a in high) + "\n"
           + f"{low_b:.8e} " + " ".join(f"{a:.8e}" for a in high) + "\n")
    e_hi = np.geomspace(k_edge * (1 + 1e-6), x0, 80)
    e_lo = np.geomspace(min(10e-6, k_edge / 10), k_edge * (1 - 1e-6), 60)
    for folder in folders:
        (folder / f"pe-high-{z}.dat").write_text(fit)
        (folder / f"pe-low-{z}.dat").write_text(fit)
        (folder / f"pe-cs-{z}.dat").write_text(
            _vector_text(e_hi, np.array([sigma(e) * e**3 for e in e_hi])))
        (folder / f"pe-le-cs-{z}.dat").write_text(
            _vector_text(e_lo, np.array([sigma(e) * e**3 for e in e_lo])))


def _write_rayleigh(z: int, folders: list[Path]) -> None:
    e = np.geomspace(1e-4, 1e5, 100)  # MeV
    thomson = 8 * np.pi / 3 * RE2_MB * 1e-3 * BARN_MM2 * z**2  # mm^2
    e_c = 0.023 * (z / 82) ** (1 / 3)  # MeV: where the atomic form factor cuts coherence
    sigma_e2 = thomson * e**2 / (1 + (e / e_c) ** 2)
    for folder in folders:
        (folder / f"re-cs-{z}.dat").write_text(_vector_text(e, sigma_e2))


def write_em_tables(g4, setup: DataSetup) -> list[int]:
    """Write the synthetic EM tables for every element Geant4 knows now; returns their Z."""
    if setup.mode != "offline":
        return []
    emlow = next(setup.data_dir.glob("G4EMLOW*"))
    brem = emlow / "brem_SB"
    phot = [emlow / "epics2017" / "phot", emlow / "livermore" / "phot_epics2014"]
    rayl = [emlow / "epics2017" / "rayl", emlow / "livermore" / "rayl"]
    for folder in [brem, *phot, *rayl]:
        folder.mkdir(parents=True, exist_ok=True)
    nist = g4.G4NistManager.Instance()
    done = []
    for element in g4.G4Element.GetElementTable():
        z = int(round(element.GetZ()))
        if z in done:
            continue
        _write_brem(z, brem)
        _write_photoelectric(g4, z, nist.FindOrBuildMaterial(f"G4_{element.GetSymbol()}"), phot)
        _write_rayleigh(z, rayl)
        done.append(z)
    return done
