"""Shower files. The sim-hit ROOT file: written by Geant4 simulation and by generators alike.

One TTree ``showers``, one entry per shower: the primary particle (PDG id, energy in MeV,
vertex in mm, unit direction); jagged per-cell branches ``cell.id``, ``cell.energy`` (MeV) and
``cell.time`` (ns, first deposit) with their counter ``cell``; ``lost_energy`` (MeV deposited
in sensors outside every cell). A TObjString ``metadata`` holds JSON: geometry hash, physics
mode and list, Geant4 version, seed, generator. Files are written under a temporary name and
renamed when complete.

The readers also read the CaloChallenge 2022 HDF5 files (``.h5``/``.hdf5``, optionally
prefixed ``calochallenge:``) as showers on the geometry of their binning XML (geometry builder
``calochallenge``: cell id = voxel index): they need that geometry, for the voxel count and the
particle; primaries start at the origin along +z (the challenge's convention), no times, no
lost energy; rows are read in chunks of ``CHUNK_ROWS`` and kept sparse.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import uproot

from fastshower.errors import FastShowerError

TREE = "showers"
CALOCHALLENGE = "calochallenge:"
CHUNK_ROWS = 1000
SCHEMA_VERSION = 1
PRIMARY_FIELDS = ("primary_pdg", "primary_energy", "primary_x", "primary_y", "primary_z",
                  "primary_dx", "primary_dy", "primary_dz")
THETA_MIN = 1e-6  # rad: directions closer to the z axis count as this far (|eta| <= ~14.5)
PARTICLES = {"e-": 11, "e+": -11, "gamma": 22, "mu-": 13, "mu+": -13, "pi-": -211, "pi+": 211,
             "proton": 2212}
PARTICLE_OF_PDG = {pdg: name for name, pdg in PARTICLES.items()}
HADRONS = ("pi-", "pi+", "proton")  # they shower through hadronic physics (FTFP_BERT)


@dataclass
class Primaries:
    """n primary particles: ``pdg`` (n,) PDG ids, ``energy_mev`` (n,) energies in MeV,
    ``position_mm`` (n, 3) start points in mm, ``direction`` (n, 3) unit vectors.

    The one record every stage passes; sim-hit files store it as the ``primary_*`` branches.
    """

    pdg: np.ndarray
    energy_mev: np.ndarray
    position_mm: np.ndarray
    direction: np.ndarray

    def __post_init__(self):
        self.pdg = np.asarray(self.pdg, dtype=np.int32).reshape(-1)
        self.energy_mev = np.asarray(self.energy_mev, dtype=np.float64).reshape(-1)
        n = len(self.energy_mev)
        self.position_mm = np.asarray(self.position_mm, dtype=np.float64).reshape(n, 3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(n, 3)
        if len(self.pdg) != n:
            raise ValueError(f"{len(self.pdg)} PDG ids for {n} primaries")

    def __len__(self) -> int:
        return len(self.energy_mev)

    def subset(self, index) -> Primaries:
        """The primaries picked by a slice, index array or mask."""
        return Primaries(self.pdg[index], self.energy_mev[index], self.position_mm[index],
                         self.direction[index])

    def eta_phi(self) -> tuple[np.ndarray, np.ndarray]:
        """Pseudorapidity and azimuth (rad) of the directions; theta at least THETA_MIN from
        the z axis (a direction along it, as the CaloChallenge's, has an infinite eta)."""
        dx, dy, dz = self.direction.T
        theta = np.clip(np.arctan2(np.hypot(dx, dy), dz), THETA_MIN, np.pi - THETA_MIN)
        return -np.log(np.tan(theta / 2)), np.arctan2(dy, dx)

    def to_branches(self) -> dict[str, np.ndarray]:
        """The ``primary_*`` branches of the sim-hit schema."""
        out = {"primary_pdg": self.pdg, "primary_energy": self.energy_mev}
        for i, k in enumerate("xyz"):
            out[f"primary_{k}"] = self.position_mm[:, i]
        for i, k in enumerate("xyz"):
            out[f"primary_d{k}"] = self.direction[:, i]
        return out

    @classmethod
    def from_branches(cls, b: dict) -> Primaries:
        return cls(b["primary_pdg"], b["primary_energy"],
                   np.stack([b[f"primary_{k}"] for k in "xyz"], -1),
                   np.stack([b[f"primary_d{k}"] for k in "xyz"], -1))

    @classmethod
    def concatenate(cls, parts: list[Primaries]) -> Primaries:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("pdg", "energy_mev", "position_mm", "direction")))


@dataclass
class ShowerBatch:
    """Showers as arrays: primaries (n,), and cell hits as awkward jagged arrays (n, var)."""

    primaries: Primaries
    cell_id: ak.Array
    cell_energy: ak.Array
    cell_time: ak.Array
    lost_energy: np.ndarray

    def __len__(self) -> int:
        return len(self.lost_energy)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shower index, cell id, energy MeV) of every hit, flattened over showers."""
        counts = ak.to_numpy(ak.num(self.cell_id))
        ids = ak.to_numpy(ak.flatten(self.cell_id)).astype(np.int64)
        energy = ak.to_numpy(ak.flatten(self.cell_energy)).astype(np.float64)
        return np.repeat(np.arange(len(counts)), counts), ids, energy

    def subset(self, index) -> ShowerBatch:
        """The showers picked by a slice, index array or mask."""
        return ShowerBatch(self.primaries.subset(index), self.cell_id[index],
                           self.cell_energy[index], self.cell_time[index],
                           self.lost_energy[index])

    def to_branches(self) -> dict:
        out = self.primaries.to_branches()
        out["lost_energy"] = np.asarray(self.lost_energy, dtype=np.float32)
        out["cell"] = ak.zip({"id": ak.values_astype(self.cell_id, np.int32),
                              "energy": ak.values_astype(self.cell_energy, np.float32),
                              "time": ak.values_astype(self.cell_time, np.float32)})
        return out


def eta_phi_direction(eta, phi) -> np.ndarray:
    """(..., 3) unit vectors along pseudorapidity ``eta`` and azimuth ``phi`` (rad)."""
    return theta_phi_direction(2 * np.arctan(np.exp(-np.asarray(eta, dtype=np.float64))), phi)


def theta_phi_direction(theta, phi) -> np.ndarray:
    """(..., 3) unit vectors at polar angle ``theta`` from +z and azimuth ``phi`` (rad)."""
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)


class SimHitWriter:
    """Appends shower batches to a sim-hit file; the file gets its final name on ``close``.

    Batches are buffered into clusters of at least ``cluster`` showers, compressed with ZSTD
    level 5 (ROOT's default for RNTuple): reading is then ~3x faster than with many small
    ZLIB clusters (docs/data.md). A crash loses nothing that was complete: the temporary file
    is never renamed.
    """

    def __init__(self, path: str | Path, metadata: dict, cluster: int = 500):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = uproot.recreate(self.tmp, compression=uproot.ZSTD(5))
        self.metadata = {**metadata, "schema_version": SCHEMA_VERSION}  # written by close
        self.cluster = cluster
        self.buffer: list[ShowerBatch] = []
        self.n = 0

    def write(self, batch: ShowerBatch) -> None:
        if len(batch):
            self.buffer.append(batch)
        if sum(len(b) for b in self.buffer) >= self.cluster:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        branches = concatenate(self.buffer).to_branches()
        if self.n == 0:
            self.file[TREE] = branches
        else:
            self.file[TREE].extend(branches)
        self.n += len(branches["lost_energy"])
        self.buffer = []

    def close(self) -> Path:
        """Finish the file (with ``metadata``, which a writer may complete until then) and give
        it its final name (only complete files carry it)."""
        self._flush()
        self.file["metadata"] = json.dumps(self.metadata)
        self.file.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _read(path: str | Path, read):
    """``read(file)`` on an open sim-hit file. Anything that makes it unreadable gives one line
    naming the file (the reader's own message, e.g. uproot's chunk sizes, says nothing to a
    user)."""
    try:
        with uproot.open(path) as f:
            return read(f)
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds for a bad file
        kind = ("missing" if isinstance(err, FileNotFoundError)
                else "not ROOT, truncated or corrupt")
        raise FastShowerError(f"{path} is not a readable fastshower sim-hit file ({kind})"
                              ) from None


def is_calochallenge(path: str | Path) -> bool:
    """Whether a sample file is a CaloChallenge HDF5 file (by its name)."""
    return Path(path).suffix.lower() in (".h5", ".hdf5")


def _challenge(path: str | Path, geom, read):
    """``read(showers, incident_energies)`` on an open CaloChallenge file, after checking that
    ``geom`` is the geometry of its voxels; one clear line for anything wrong."""
    if geom is None or geom.builder != "calochallenge":
        raise FastShowerError(f"{path} is a CaloChallenge file: give the geometry of its voxels "
                              "(--geometry BINNING.xml, or a geometry imported from it)")
    try:
        with h5py.File(path, "r") as f:
            showers, energies = f["showers"], f["incident_energies"]
            if showers.ndim != 2 or len(energies) != len(showers):
                raise ValueError("showers must be (N, voxels) with N incident energies")
            if showers.shape[1] != geom.n_cells:
                raise FastShowerError(
                    f"{path} has {showers.shape[1]} voxels per shower, its geometry "
                    f"{geom.n_cells}: not the binning XML of this dataset")
            return read(showers, energies)
    except FastShowerError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py raises many kinds for a bad file
        raise FastShowerError(f"{path} is not a readable CaloChallenge HDF5 file "
                              f"(datasets showers, incident_energies): {err}") from None


def _challenge_rows(showers, energies, lo: int, hi: int, pdg: int) -> ShowerBatch:
    """Rows [lo, hi) as a sparse ShowerBatch, read CHUNK_ROWS at a time."""
    ids, values, counts = [], [], []
    for start in range(lo, hi, CHUNK_ROWS):
        dense = np.asarray(showers[start:min(start + CHUNK_ROWS, hi)], dtype=np.float64)
        if not np.isfinite(dense).all() or (dense < 0).any():
            raise FastShowerError(f"showers {start}..{start + len(dense)} have NaN, inf or "
                                  "negative voxel energies")
        row, col = np.nonzero(dense)
        ids.append(col.astype(np.int32))
        values.append(dense[row, col])
        counts.append(np.bincount(row, minlength=len(dense)))
    n = hi - lo
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    energy = np.concatenate(values) if values else np.zeros(0)
    primaries = _challenge_primaries(energies[lo:hi], pdg)
    return ShowerBatch(primaries, ak.unflatten(flat, counts), ak.unflatten(energy, counts),
                       ak.unflatten(np.zeros(len(flat), np.float32), counts), np.zeros(n))


def _challenge_primaries(incident_mev, pdg: int) -> Primaries:
    """The challenge's primaries: ``pdg`` at the origin along +z with the incident energies."""
    e = np.asarray(incident_mev, dtype=np.float64).reshape(-1)
    n = len(e)
    return Primaries(np.full(n, pdg), e, np.zeros((n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1)))


def read_metadata(path: str | Path, geom=None) -> dict:
    """The JSON metadata of a sim-hit file; a clear error for anything else."""
    return read_header(path, geom)[0]


def read_header(path: str | Path, geom=None) -> tuple[dict, int]:
    """The JSON metadata and the number of showers of a sample file, in one opening; for a
    CaloChallenge file (which has none) the metadata of its geometry (see the module
    docstring)."""
    if is_calochallenge(path):
        return _challenge(path, geom, lambda s, _: (
            {"format": "calochallenge", "geometry_hash": geom.hash}, len(s)))
    return _read(path, lambda f: (json.loads(str(f["metadata"])), int(f[TREE].num_entries)))


def read_showers(path: str | Path, entry_start: int | None = None,
                 entry_stop: int | None = None, geom=None) -> ShowerBatch:
    """Read showers [entry_start, entry_stop) of one sample file (``geom``: needed for a
    CaloChallenge file)."""
    if is_calochallenge(path):
        return _challenge(path, geom, lambda s, e: _challenge_rows(
            s, e, *slice(entry_start, entry_stop).indices(len(s))[:2], geom.config["pid"]))
    arr = _read(path, lambda f: f[TREE].arrays(entry_start=entry_start, entry_stop=entry_stop))
    return ShowerBatch(
        primaries=Primaries.from_branches({k: ak.to_numpy(arr[k]) for k in PRIMARY_FIELDS}),
        cell_id=arr["cell", "id"], cell_energy=arr["cell", "energy"], cell_time=arr["cell", "time"],
        lost_energy=ak.to_numpy(arr["lost_energy"]),
    )


def read_primaries(spec: str | Path, geom=None) -> Primaries:
    """The primaries of every shower of a sample (file, folder or glob), in order, without
    reading the hits (``geom``: needed for CaloChallenge files)."""
    return Primaries.concatenate([
        _challenge(f, geom, lambda _, e: _challenge_primaries(e[:], geom.config["pid"]))
        if is_calochallenge(f) else
        Primaries.from_branches(_read(f, lambda h: h[TREE].arrays(list(PRIMARY_FIELDS),
                                                                  library="np")))
        for f in sample_files(spec)])


def concatenate(batches: list[ShowerBatch]) -> ShowerBatch:
    """One batch from several, in order."""
    return ShowerBatch(
        primaries=Primaries.concatenate([b.primaries for b in batches]),
        cell_id=ak.concatenate([b.cell_id for b in batches]),
        cell_energy=ak.concatenate([b.cell_energy for b in batches]),
        cell_time=ak.concatenate([b.cell_time for b in batches]),
        lost_energy=np.concatenate([b.lost_energy for b in batches]),
    )


def sample_files(spec: str | Path) -> list[Path]:
    """The files of a sample: a file, a production folder (its job_*.root) or a glob, or
    several of these joined by commas; a CaloChallenge file may be prefixed ``calochallenge:``."""
    if "," in str(spec):
        return [f for part in str(spec).split(",") for f in sample_files(part)]
    spec = str(spec).removeprefix(CALOCHALLENGE)
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.root"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(f) for f in glob.glob(str(spec)))
    if not files:
        raise FastShowerError(f"no sim-hit files found at {spec}")
    return files


def read_sample(spec: str | Path, geom=None) -> tuple[ShowerBatch, dict]:
    """All showers of a sample and the metadata of its first file; files must share a geometry
    (``geom``: needed for CaloChallenge files)."""
    files = sample_files(spec)
    metas = [read_metadata(f, geom) for f in files]
    hashes = {m.get("geometry_hash") for m in metas}
    if len(hashes) != 1:
        raise FastShowerError(f"the files of {spec} were made with different geometries")
    return concatenate([read_showers(f, geom=geom) for f in files]), metas[0]
