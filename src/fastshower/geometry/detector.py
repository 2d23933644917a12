"""The detector description every stage shares: layers, cell table, segmentation, neighbour graph.

Saved as one HDF5 file with a format version and its identity (geometry.identity: the same on
every CPU); readers recompute the identity and refuse a file that does not match, so a corrupt or
edited geometry never passes silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
from pydantic import ValidationError

from fastshower.errors import GeometryError
from fastshower.geometry import calochallenge, grid, hgcal, identity, table
from fastshower.geometry.layers import Layer, next_layer
from fastshower.geometry.materials import material
from fastshower.geometry.neighbours import (
    in_layer_pairs,
    longitudinal_pairs,
    symmetric_edges,
    unique,
)
from fastshower.geometry.polygons import pad_corners
from fastshower.geometry.segmentation import Segmentation
from fastshower.geometry.showers import line_at

FORMAT = "fastshower-geometry"
FORMAT_VERSION = 2  # 2: identity scheme 2 (quantised content, CPU-independent)
BUILDERS = {"hgcal": (hgcal.HGCalConfig, hgcal.build), "grid": (grid.GridConfig, grid.build),
            "calochallenge": (calochallenge.CaloChallengeConfig, calochallenge.build)}
CELL_COLUMNS = ("key", "layer", "x", "y", "z", "type", "area", "thickness", "corners",
                "n_corners")


@dataclass
class Geometry:
    """A calorimeter as a table of cells (sorted by key; cell id = row) and its neighbour graph.

    Units: mm. ``cells`` columns: key (int64), layer, x, y, z (cell centre), type (0 silicon,
    1 scintillator), area (mm^2), thickness (sensor, mm), corners (n, K, 2; NaN-padded),
    n_corners. ``edges``: (2, E) int32, symmetric, no self-loops; ``edge_kind`` per edge.
    """

    builder: str
    config: dict
    layers: list[Layer]
    segmentation: Segmentation
    cells: dict[str, np.ndarray]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), np.int32))
    edge_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    def __post_init__(self):
        self.segmentation.attach(self.cells)

    @property
    def n_cells(self) -> int:
        return len(self.cells["key"])

    @property
    def cell_size(self) -> np.ndarray:
        """Linear cell size, sqrt(area), in mm."""
        return np.sqrt(self.cells["area"])

    def lookup(self, layer, x, y) -> np.ndarray:
        """Cell ids of points (x, y) in mm on the given layers; -1 where no cell is.

        Callers count the -1s (energy outside the detector) rather than dropping them.
        """
        keys = self.segmentation.keys(layer, x, y)
        table = self.cells["key"]
        pos = np.clip(np.searchsorted(table, keys), 0, len(table) - 1)
        return np.where((table[pos] == keys) & (keys >= 0), pos, -1)

    def entry_cells(self, position_mm: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Cell ids where straight lines from ``position_mm`` (n, 3) along ``direction`` (n, 3)
        cross the first sensor plane of the endcap they point to; -1 where a line points away
        from the calorimeter or crosses that plane outside every cell (it misses the detector).
        """
        pos = np.asarray(position_mm, dtype=np.float64).reshape(-1, 3)
        d = np.asarray(direction, dtype=np.float64).reshape(-1, 3)
        z = np.array([lay.z for lay in self.layers])
        out = np.full(len(pos), -1, dtype=np.int64)
        for side in (1.0, -1.0):
            planes = np.flatnonzero(np.sign(z) == side)
            if not len(planes):
                continue
            first = planes[np.argmin(np.abs(z[planes]))]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                x, y = line_at(z[first], *pos.T, *d.T)
            ahead = (np.sign(d[:, 2]) == side) & (np.sign(z[first] - pos[:, 2]) == side)
            ok = ahead & (np.abs(x) < 1e5) & (np.abs(y) < 1e5)
            ids = self.lookup(np.full(len(pos), first), np.where(ok, x, 0.0),
                              np.where(ok, y, 0.0))
            out = np.where(ok, ids, out)
        return out

    def metadata(self) -> dict:
        return {
            "builder": self.builder,
            "config": self.config,
            "layers": [lay.to_dict() for lay in self.layers],
            "segmentation": self.segmentation.to_dict(),
        }

    @cached_property
    def hash(self) -> str:
        """The geometry's identity downstream: the same on every machine (geometry.identity)."""
        return identity.identity(self.metadata(), self.cells, self.edges, self.edge_kind, FORMAT)

    @cached_property
    def legacy_hash(self) -> str:
        """The CPU-dependent scheme-1 hash that files written before identity scheme 2 record."""
        return identity.legacy_hash(self.metadata(), self.cells, self.edges, self.edge_kind,
                                    CELL_COLUMNS)

    def require_same(self, recorded: str | None, what: str) -> None:
        """Refuse ``what`` unless the identity it records is this geometry's."""
        identity.require_same(recorded, self, what)

    @cached_property
    def mip_energy(self) -> np.ndarray:
        """Mean energy (MeV) a minimum-ionising particle leaves in each cell's sensor."""
        per_mm = np.where(self.cells["type"] == 0, material("G4_Si").mip_mev_per_mm,
                          material("G4_POLYSTYRENE").mip_mev_per_mm)
        return per_mm * self.cells["thickness"]

    @cached_property
    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour graph as CSR: (indptr (n_cells + 1,), neighbour ids)."""
        return np.searchsorted(self.edges[0], np.arange(self.n_cells + 1)), self.edges[1]

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def build_neighbours(self, eps: float = 1.0) -> None:
        """Fill ``edges`` and ``edge_kind`` (in-layer touching cells and longitudinal links)."""
        c = self.cells
        pairs = [self.segmentation.in_layer_pairs(c["key"])]
        if pairs[0] is None:
            order = np.argsort(c["layer"], kind="stable")
            bounds = np.searchsorted(c["layer"][order], np.arange(len(self.layers) + 1))
            pairs = [in_layer_pairs(self.lookup, lay,
                                    c["corners"][order[bounds[lay]:bounds[lay + 1]]], eps=eps)
                     for lay in range(len(self.layers))]
        pairs.append(longitudinal_pairs(c["x"], c["y"], self.cell_size, c["layer"],
                                        next_layer(self.layers, with_cells=c["layer"])))
        self.edges, self.edge_kind = symmetric_edges(
            unique(np.concatenate(pairs)), c["type"], c["layer"])
        self.__dict__.pop("hash", None)
        self.__dict__.pop("legacy_hash", None)


def build_geometry(builder: str = "hgcal", config: dict | None = None,
                   neighbours: bool = True) -> Geometry:
    """Build a geometry with a named builder ('hgcal' or 'grid') and its config overrides."""
    if builder not in BUILDERS:
        raise GeometryError(f"unknown geometry builder {builder!r}; choose one of "
                            f"{', '.join(BUILDERS)}")
    config_type, build = BUILDERS[builder]
    try:
        cfg = config_type.model_validate(config or {})
    except ValidationError as err:
        raise GeometryError(f"bad {builder} geometry config: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors())) from None
    layers, seg, per_layer = build(cfg)
    width = max(c["corners"].shape[1] for c in per_layer)
    cells = {}
    for name in CELL_COLUMNS:
        parts = [c[name] if name != "corners" else pad_corners(c[name], width) for c in per_layer]
        cells[name] = np.concatenate(parts)
    order = np.argsort(cells["key"], kind="stable")
    cells = {k: v[order] for k, v in cells.items()}
    geom = Geometry(builder, cfg.model_dump(mode="json"), layers, seg, cells)
    if neighbours:
        geom.build_neighbours()
    return geom


def save(geom: Geometry, path: str | Path) -> Path:
    """Write the geometry to one HDF5 file (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["hash"] = geom.hash
        f.attrs["metadata"] = json.dumps(geom.metadata())
        for name in CELL_COLUMNS:
            f.create_dataset(f"cells/{name}", data=geom.cells[name])
        f.create_dataset("edges/index", data=geom.edges)
        f.create_dataset("edges/kind", data=geom.edge_kind)
    tmp.replace(path)
    return path


def import_geometry(source: str | Path, settings: dict | None = None) -> Geometry:
    """A geometry from another description: a CaloChallenge binning XML (.xml; ``settings``:
    the calochallenge builder's material options) or a cell table (.csv, .parquet, .h5,
    .root; ``settings``: the layer YAML of geometry.table)."""
    source = Path(source)
    if source.suffix.lower() == ".xml":
        binning = calochallenge.Binning.read(source)
        return build_geometry("calochallenge", {
            **calochallenge.CaloChallengeConfig.of(binning).model_dump(), **(settings or {})})
    layers, seg, cells, config = table.from_table(table.read_table(source), settings,
                                                  str(source))
    order = np.argsort(cells["key"], kind="stable")
    geom = Geometry("table", config, layers, seg, {k: v[order] for k, v in cells.items()})
    geom.build_neighbours()
    return geom


def load(path: str | Path) -> Geometry:
    """Read a geometry file, checking format, version and content hash; a CaloChallenge binning
    XML is imported with the default materials."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return import_geometry(path)
    if not path.is_file():
        raise GeometryError(f"geometry file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise GeometryError(f"{path} is not a fastshower geometry file")
            version = int(f.attrs["format_version"])
            if version != FORMAT_VERSION:
                raise GeometryError(f"{path} has geometry format version {version}; this "
                                    f"fastshower reads version {FORMAT_VERSION}: rebuild it "
                                    "with `fastshower geometry build`")
            stored = str(f.attrs["hash"])
            meta = json.loads(f.attrs["metadata"])
            cells = {name: f[f"cells/{name}"][...] for name in CELL_COLUMNS}
            edges, kind = f["edges/index"][...], f["edges/kind"][...]
    except GeometryError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise GeometryError(f"cannot read geometry file {path} (corrupt or truncated?): "
                            f"{err}") from None
    geom = Geometry(meta["builder"], meta["config"],
                    [Layer.from_dict(d) for d in meta["layers"]],
                    Segmentation.from_dict(meta["segmentation"]), cells, edges, kind)
    if geom.hash != stored:
        raise GeometryError(f"geometry file {path} fails its identity (content hash) check (stored "
                            f"{stored[:12]}, computed {geom.short_hash}): it is corrupt or was "
                            "modified; rebuild it with `fastshower geometry build`")
    return geom
