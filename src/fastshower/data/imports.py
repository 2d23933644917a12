"""External sim-hit ntuples -> fastshower sim-hit files (``fastshower import-hits``).

The source is a ROOT tree with one entry per event (shower): jagged per-hit branches (the
experiment's cell id = detid, energy, optionally time) and per-event branches of the primary
(energy, PDG id, direction as dx/dy/dz or eta/phi, optionally the vertex). Branch names and
units are an ``HitBranches`` (command-line options or a YAML). Each hit goes to the cell of the
geometry whose key is its detid (a geometry imported from the experiment's cell table keeps
the detids as keys); hits of one event on one cell are summed (time: the earliest). Hits with
a detid the geometry does not know are never dropped silently: their energy becomes the
event's ``lost_energy``, and their number and energy are reported and recorded in the file's
metadata. The tree is read in chunks of ``step`` events, so its size is not limited by memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import awkward as ak
import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.simhits import (
    PARTICLES,
    Primaries,
    ShowerBatch,
    SimHitWriter,
    eta_phi_direction,
)
from fastshower.simulation.scoring import merge_hits

UNITS = {"keV": 1e-3, "MeV": 1.0, "GeV": 1e3}
LENGTH_UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


class HitBranches(BaseModel):
    """Where the source tree keeps each quantity. Per-hit (jagged) branches: ``detid``,
    ``energy`` and optionally ``time`` (ns); per-event: ``primary_energy``, the primary's PDG
    id (``primary_pdg``, or one ``particle`` for all events), its direction (``primary_dx,
    primary_dy, primary_dz``, or ``primary_eta, primary_phi`` in rad) and optionally its vertex
    (``primary_x, primary_y, primary_z``; else the origin)."""

    model_config = ConfigDict(extra="forbid")

    tree: str | None = None  # default: the file's only TTree
    detid: str
    energy: str
    time: str | None = None
    energy_unit: Literal["keV", "MeV", "GeV"] = "MeV"
    primary_energy: str
    primary_energy_unit: Literal["keV", "MeV", "GeV"] = "MeV"
    primary_pdg: str | None = None
    particle: str | None = None
    primary_dx: str | None = None
    primary_dy: str | None = None
    primary_dz: str | None = None
    primary_eta: str | None = None
    primary_phi: str | None = None
    primary_x: str | None = None
    primary_y: str | None = None
    primary_z: str | None = None
    length_unit: Literal["mm", "cm", "m"] = "mm"
    step: int = Field(1000, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> HitBranches:
        if (self.primary_pdg is None) == (self.particle is None):
            raise ValueError("give either primary_pdg (a branch) or particle (one for all)")
        if self.particle is not None and self.particle not in PARTICLES:
            raise ValueError(f"unknown particle {self.particle!r}; one of "
                             f"{', '.join(PARTICLES)}")
        cartesian = [self.primary_dx, self.primary_dy, self.primary_dz]
        polar = [self.primary_eta, self.primary_phi]
        if not (all(cartesian) and not any(polar)) and not (all(polar) and not any(cartesian)):
            raise ValueError("give the direction as primary_dx, primary_dy, primary_dz or as "
                             "primary_eta, primary_phi")
        vertex = [self.primary_x, self.primary_y, self.primary_z]
        if any(vertex) and not all(vertex):
            raise ValueError("give all of primary_x, primary_y, primary_z or none")
        return self

    def names(self) -> list[str]:
        """The branches to read."""
        skip = {"tree", "energy_unit", "primary_energy_unit", "particle", "length_unit", "step"}
        return [v for k, v in self.model_dump().items() if k not in skip and v is not None]


def _tree(path: Path, name: str | None):
    """The source tree; one clear line when it is missing or ambiguous."""
    try:
        f = uproot.open(path)
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds for a bad file
        raise FastShowerError(f"{path} is not a readable ROOT file: {err}") from None
    trees = sorted({k.split(";")[0] for k, c in f.classnames().items()
                    if c in ("TTree", "ROOT::RNTuple")})
    if name is None:
        if len(trees) != 1:
            raise FastShowerError(f"{path} has {len(trees)} trees ({', '.join(trees)}): name "
                                  "one with tree")
        name = trees[0]
    if name not in trees:
        raise FastShowerError(f"{path} has no tree {name!r}; it has {', '.join(trees)}")
    return f[name]


def _field(arrays: ak.Array, name: str) -> ak.Array:
    """A branch of the chunk; an RNTuple's sub-field "a.b" is the record field a, b."""
    if name in arrays.fields:
        return arrays[name]
    return arrays[tuple(name.split("."))]


def to_showers(arrays: dict, b: HitBranches, geom: Geometry) -> tuple[ShowerBatch, int, float]:
    """One chunk of the source as a ShowerBatch on ``geom``'s cells, the number of hits with
    unknown detids and their energy (MeV)."""
    n = len(arrays[b.primary_energy])
    counts = ak.to_numpy(ak.num(arrays[b.detid]))
    if not np.array_equal(counts, ak.to_numpy(ak.num(arrays[b.energy]))):
        raise FastShowerError(f"branches {b.detid} and {b.energy} differ in hits per event")
    detid = ak.to_numpy(ak.flatten(arrays[b.detid]))
    if detid.dtype.kind not in "iu":
        raise FastShowerError(f"branch {b.detid} holds {detid.dtype} values: detids must be "
                              "integers (a float cannot hold a 64-bit id exactly)")
    detid = detid.astype(np.int64)
    energy = ak.to_numpy(ak.flatten(arrays[b.energy])).astype(np.float64) * UNITS[b.energy_unit]
    time = (ak.to_numpy(ak.flatten(arrays[b.time])).astype(np.float64) if b.time
            else np.zeros(len(detid)))
    event = np.repeat(np.arange(n), counts)
    keys = geom.cells["key"]
    pos = np.clip(np.searchsorted(keys, detid), 0, len(keys) - 1)
    known = keys[pos] == detid
    lost = np.bincount(event[~known], energy[~known], minlength=n)
    per_event, cells, e_cell, t_cell = merge_hits(event[known], pos[known], energy[known],
                                                  time[known], n)
    p_energy = np.asarray(arrays[b.primary_energy], np.float64) * UNITS[b.primary_energy_unit]
    pdg = (np.asarray(arrays[b.primary_pdg]) if b.primary_pdg
           else np.full(n, PARTICLES[b.particle]))
    if b.primary_dx:
        d = np.stack([np.asarray(arrays[k], np.float64) for k in
                      (b.primary_dx, b.primary_dy, b.primary_dz)], -1)
        norm = np.linalg.norm(d, axis=1, keepdims=True)
        if np.any(~(norm > 0)):
            raise FastShowerError("some primaries have a zero or NaN direction")
        d = d / norm
    else:
        d = eta_phi_direction(np.asarray(arrays[b.primary_eta]),
                              np.asarray(arrays[b.primary_phi]))
    vertex = (np.stack([np.asarray(arrays[k], np.float64) for k in
                        (b.primary_x, b.primary_y, b.primary_z)], -1)
              * LENGTH_UNITS[b.length_unit] if b.primary_x else np.zeros((n, 3)))
    batch = ShowerBatch(Primaries(pdg, p_energy, vertex, d),
                        ak.unflatten(cells.astype(np.int32), per_event),
                        ak.unflatten(e_cell, per_event),
                        ak.unflatten(t_cell.astype(np.float32), per_event), lost)
    return batch, int((~known).sum()), float(energy[~known].sum())


def import_hits(source: str | Path, geom: Geometry, out: str | Path, b: HitBranches,
                on_chunk=None) -> dict:
    """Convert the source tree to one sim-hit file ``out``; returns what was imported (showers,
    hits, unknown detids and their energy). ``on_chunk(done, total)`` reports progress."""
    source, out = Path(source), Path(out)
    tree = _tree(source, b.tree)
    missing = [name for name in b.names() if name not in tree.keys()]
    if missing:
        raise FastShowerError(f"{source}:{tree.name} has no branch(es) {', '.join(missing)}; it "
                              f"has {', '.join(tree.keys())}")
    total = tree.num_entries
    summary = {"showers": 0, "hits": 0, "unknown_detid_hits": 0, "unknown_detid_energy_mev": 0.0}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"geometry_hash": geom.hash, "generator": "import-hits", "source": str(source),
            "branches": b.model_dump(), "fastshower_version": __version__}
    writer = SimHitWriter(out, meta)
    try:
        for arrays in tree.iterate(b.names(), step_size=b.step, library="ak"):
            batch, unknown, e_unknown = to_showers({k: _field(arrays, k) for k in b.names()},
                                                   b, geom)
            writer.write(batch)
            summary["showers"] += len(batch)
            summary["hits"] += int(ak.sum(ak.num(batch.cell_id)))
            summary["unknown_detid_hits"] += unknown
            summary["unknown_detid_energy_mev"] += e_unknown
            if on_chunk is not None:
                on_chunk(summary["showers"], total)
    except BaseException:
        writer.abort()
        raise
    writer.metadata["import"] = summary
    writer.close()
    return summary
