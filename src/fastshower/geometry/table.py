"""A detector of your own: a geometry from a cell table (e.g. dumped from the experiment's
software), in CSV, Parquet, HDF5 or a ROOT TTree, and the same table written back.

Columns (one row per cell; lengths in mm):
- ``id``: the experiment's cell id (detid), any non-negative 64-bit integer;
- ``layer``: the experiment's layer number (any integers; layers are ordered by it);
- ``x``, ``y``, ``z``: the cell centre; ``type``: silicon / scintillator / other (or 0 / 1 / 2);
- the cell's outline: either corners ``cx0, cy0, cx1, cy1, ...`` (NaN past a cell's last
  corner) or ``shape`` (square, hexagon) and ``size`` (side length; a hexagon's corners at
  ``angle_deg`` + k 60 degrees, default 0) around the centre;
- ``thickness``: the sensor's (mm), unless the layer YAML gives ``sensor_thickness``.

The layer YAML (optional): ``absorbers: [[material, mm], ...]`` in front of every sensor, or
``layers: [{absorbers: ..., sensor_thickness: ...}, ...]`` one per layer in order. Without an
absorber stack the depths in X0 are those of the sensors alone (the geometry can then carry
data, but not be simulated with Geant4, and depth features of the generators are nominal).

The lookup of a point: the cell of its layer whose outline holds it (shapely's R-tree; on a
shared edge, the nearest centre); else -1. Outlines are polygons: a curved edge is as exact
as the corners the table gives it. Neighbours are found
as for the built-in geometries, by probing around every corner through that lookup.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import h5py
import numpy as np
import shapely
import uproot
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fastshower.errors import GeometryError
from fastshower.geometry.layers import Layer, lay_out
from fastshower.geometry.segmentation import SCINTILLATOR, SILICON, Segmentation

OTHER = 2
TYPES = {"silicon": SILICON, "scintillator": SCINTILLATOR, "other": OTHER}
REQUIRED = ("id", "layer", "x", "y", "z", "type")
TREE = "cells"


class LayerMaterial(BaseModel):
    """The material in front of one layer's sensors, and the sensor thickness (mm)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    absorbers: list[tuple[str, float]] = []
    sensor_thickness: float | None = Field(None, gt=0)


class TableConfig(BaseModel):
    """The layer YAML: one stack for every layer, or one entry per layer."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    absorbers: list[tuple[str, float]] = []
    sensor_thickness: float | None = Field(None, gt=0)
    layers: list[LayerMaterial] | None = None


# ---- reading and writing tables --------------------------------------------------------------
def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a cell table by file type: .csv, .parquet, .h5/.hdf5 (one dataset per column,
    or one compound dataset), .root (the first TTree)."""
    path = Path(path)
    if not path.is_file():
        raise GeometryError(f"cell table {path} does not exist")
    kind = path.suffix.lower()
    try:
        if kind == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            header, body = rows[0], rows[1:]
            return {name: _column([r[i] for r in body]) for i, name in enumerate(header)}
        if kind == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return {name: table[name].to_numpy() for name in table.column_names}
        if kind in (".h5", ".hdf5"):
            with h5py.File(path, "r") as f:
                names = [k for k in f if isinstance(f[k], h5py.Dataset)]
                if len(names) == 1 and f[names[0]].dtype.names:
                    data = f[names[0]][...]
                    return {n: _decoded(data[n]) for n in data.dtype.names}
                return {k: _decoded(f[k][...]) for k in names}
        if kind == ".root":
            with uproot.open(path) as f:
                trees = [k for k, c in f.classnames().items() if c in ("TTree", "ROOT::RNTuple")]
                if not trees:
                    raise ValueError("no TTree or RNTuple in the file")
                return {k: np.asarray(v) for k, v in f[trees[0]].arrays(library="np").items()}
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise GeometryError(f"cannot read cell table {path}: {err}") from None
    raise GeometryError(f"cell table {path}: unknown file type {kind!r} (use .csv, .parquet, "
                        ".h5 or .root)")


def _column(values: list[str]) -> np.ndarray:
    """A CSV column as int64, else float64, else strings."""
    for dtype in (np.int64, np.float64):
        try:
            return np.array([v if v != "" else "nan" for v in values], dtype=dtype)
        except ValueError:
            continue
    return np.array(values, dtype=str)


def _decoded(a: np.ndarray) -> np.ndarray:
    return a.astype(str) if a.dtype.kind in "SO" else a


def write_table(columns: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write cell-table columns in the format of ``path``'s suffix (see ``read_table``)."""
    path = Path(path)
    kind = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".csv":
        names = list(columns)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            w.writerows(zip(*(_csv_values(columns[n]) for n in names), strict=True))
    elif kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)
    elif kind in (".h5", ".hdf5"):
        with h5py.File(path, "w") as f:
            for name, values in columns.items():
                f[name] = values.astype("S") if values.dtype.kind == "U" else values
    elif kind == ".root":
        if any(v.dtype.kind == "U" for v in columns.values()):
            raise GeometryError("a ROOT cell table takes numeric columns: write type as "
                                "0 / 1 / 2")
        with uproot.recreate(path) as f:
            f.mktree(TREE, {k: v.dtype for k, v in columns.items()}).extend(columns)
    else:
        raise GeometryError(f"cannot write a cell table as {kind!r} (use .csv, .parquet, .h5 "
                            "or .root)")
    return path


def _csv_values(a: np.ndarray) -> list[str]:
    if a.dtype.kind == "f":  # shortest repr that reads back to the same float
        return ["" if math.isnan(v) else repr(float(v)) for v in a.tolist()]
    return [str(v) for v in a.tolist()]


def cell_table(geom, type_names: bool = True) -> dict[str, np.ndarray]:
    """A geometry's cells as a table (see the module docstring): its keys as ids."""
    c = geom.cells
    width = c["corners"].shape[1]
    cols = {"id": c["key"], "layer": c["layer"].astype(np.int64),
            "x": c["x"], "y": c["y"], "z": c["z"],
            "type": (np.array(list(TYPES))[c["type"]] if type_names
                     else c["type"].astype(np.int64)),
            "thickness": c["thickness"]}
    for k in range(width):
        cols[f"cx{k}"] = c["corners"][:, k, 0]
        cols[f"cy{k}"] = c["corners"][:, k, 1]
    return cols


# ---- the segmentation --------------------------------------------------------------------------
class TableSegmentation(Segmentation):
    """Point -> the cell whose outline holds it (on a shared edge, the nearest centre), by an
    R-tree of the outlines per layer; built from the geometry's own cells (``attach``), so its
    saved form holds nothing."""

    kind = "table"

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_params(cls, d: dict) -> TableSegmentation:
        return cls()

    def attach(self, cells: dict[str, np.ndarray]) -> None:
        layer = cells["layer"].astype(np.int64)
        self.n_layers = int(layer.max(initial=-1)) + 1
        self.key = cells["key"]
        self.centre = np.stack([cells["x"], cells["y"]], -1).astype(np.float64)
        order = np.argsort(layer, kind="stable")
        bounds = np.searchsorted(layer[order], np.arange(self.n_layers + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(self.n_layers)]
        outline = outlines(cells["corners"], cells["n_corners"])
        self.trees = [shapely.STRtree(outline[m]) for m in self.members]

    def keys(self, layer, x, y) -> np.ndarray:
        layer = np.asarray(layer, dtype=np.int64)
        shape = np.broadcast_shapes(layer.shape, np.shape(x), np.shape(y))
        layer, x, y = (np.broadcast_to(np.asarray(a), shape).ravel() for a in (layer, x, y))
        out = np.full(len(layer), -1, dtype=np.int64)
        for lay in np.unique(layer):
            if not 0 <= lay < self.n_layers:
                continue
            sel = np.flatnonzero(layer == lay)
            points = shapely.points(np.asarray(x[sel], np.float64), np.asarray(y[sel], np.float64))
            i, j = self.trees[lay].query(points, predicate="intersects")
            cell = self.members[lay][j]
            d = np.hypot(self.centre[cell, 0] - x[sel][i], self.centre[cell, 1] - y[sel][i])
            order = np.lexsort((d, i))  # per point, the nearest centre first
            first = np.ones(len(order), dtype=bool)
            first[1:] = i[order][1:] != i[order][:-1]
            out[sel[i[order][first]]] = self.key[cell[order][first]]
        return out.reshape(shape)


def outlines(corners: np.ndarray, n_corners: np.ndarray) -> np.ndarray:
    """Shapely polygons of NaN-padded corners (n, K, 2) with n_corners each."""
    out = np.empty(len(corners), dtype=object)
    for n in np.unique(n_corners):
        sel = n_corners == n
        out[sel] = shapely.polygons(corners[sel, :n].astype(np.float64))
    return out


# ---- building a geometry from a table ------------------------------------------------------------
def _shape_corners(cols: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(corners (n, K, 2), n_corners) from corner columns or from shape + size."""
    k = 0
    while f"cx{k}" in cols and f"cy{k}" in cols:
        k += 1
    if k:
        corners = np.stack([np.stack([np.asarray(cols[f"cx{i}"], np.float64),
                                      np.asarray(cols[f"cy{i}"], np.float64)], -1)
                            for i in range(k)], 1)
        valid = ~np.isnan(corners).any(-1)
        n_corners = np.where(valid.all(1), k, valid.argmin(1))
        bad = (n_corners < 3) | (valid.sum(1) != n_corners)
        if bad.any():
            raise GeometryError(f"{int(bad.sum())} cells have fewer than 3 corners, or NaN "
                                "before their last corner")
        return corners, n_corners
    if "shape" not in cols or "size" not in cols:
        raise GeometryError("the cell table needs the cells' outlines: corner columns cx0, cy0, "
                            "cx1, cy1, ... or the columns shape and size")
    shape = np.char.lower(np.asarray(cols["shape"]).astype(str))
    size = np.asarray(cols["size"], np.float64)
    angle = np.deg2rad(np.asarray(cols.get("angle_deg", np.zeros(n)), np.float64))
    unknown = sorted(set(shape.tolist()) - {"square", "hexagon"})
    if unknown:
        raise GeometryError(f"unknown cell shape(s) {', '.join(unknown)}: use square or hexagon")
    corners = np.full((n, 6, 2), np.nan)
    for name, count, radius in (("square", 4, size / math.sqrt(2)), ("hexagon", 6, size)):
        sel = shape == name
        start = angle[sel] + (math.pi / 4 if name == "square" else 0.0)
        a = start[:, None] + 2 * math.pi * np.arange(count)[None] / count
        cos, sin = (np.array([f(v) for v in a.ravel()]).reshape(a.shape)
                    for f in (math.cos, math.sin))
        corners[sel, :count, 0] = radius[sel, None] * cos
        corners[sel, :count, 1] = radius[sel, None] * sin
    corners += np.stack([cols["x"], cols["y"]], -1).astype(np.float64)[:, None]
    return corners, np.where(shape == "square", 4, 6)


def _types(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        codes = v.astype(np.int64)
    else:
        names = np.char.lower(v.astype(str))
        unknown = sorted(set(names.tolist()) - set(TYPES))
        if unknown:
            raise GeometryError(f"unknown cell type(s) {', '.join(unknown)}: use silicon, "
                                "scintillator or other")
        codes = np.array([TYPES[s] for s in names.tolist()], dtype=np.int64)
    if np.any((codes < 0) | (codes > OTHER)):
        raise GeometryError("cell types must be 0 (silicon), 1 (scintillator) or 2 (other)")
    return codes.astype(np.int8)


def _layers(numbers: np.ndarray, z: list[np.ndarray], thickness: np.ndarray,
            cfg: TableConfig) -> list[Layer]:
    """One Layer per layer number (in order): z the median of its cells', the absorber stack,
    the sensor slot ``thickness`` (mm) and depths (X0, lambda) counted along each endcap from
    its first layer."""
    n = len(numbers)
    if cfg.layers is not None and len(cfg.layers) != n:
        raise GeometryError(f"the layer YAML lists {len(cfg.layers)} layers, the table has {n}")
    stacks = ([list(m.absorbers) for m in cfg.layers] if cfg.layers is not None
              else [list(cfg.absorbers)] * n)
    z_layer = np.array([float(np.median(z[i])) for i in range(n)])
    depths = np.zeros((n, 2))
    for side in (1.0, -1.0):
        idx = sorted(np.flatnonzero(np.sign(z_layer) == side), key=lambda i: abs(z_layer[i]))
        if idx:
            laid = lay_out([("imported", [stacks[i]], float(thickness[i]), None) for i in idx],
                           z_front=0.0)
            depths[idx] = [(lay.depth_x0, lay.depth_lambda) for lay in laid]
    return [Layer(i, f"layer {int(numbers[i])}", float(z_layer[i]),
                  tuple((str(m), float(t)) for m, t in stacks[i]),
                  float(thickness[i]), float(depths[i, 0]), float(depths[i, 1]))
            for i in range(n)]


def from_table(cols: dict[str, np.ndarray], settings: dict | None = None,
               source: str = "cell table"):
    """(layers, segmentation, cell columns, config) of a cell table and its layer settings."""
    try:
        cfg = TableConfig.model_validate(settings or {})
    except ValidationError as err:
        raise GeometryError(f"bad layer settings for {source}: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
    missing = [c for c in REQUIRED if c not in cols]
    if "thickness" not in cols and cfg.sensor_thickness is None and not (
            cfg.layers and all(m.sensor_thickness for m in cfg.layers)):
        missing.append("thickness (or sensor_thickness in the layer YAML)")
    if missing:
        raise GeometryError(f"{source} lacks the column(s) {', '.join(missing)}; it has "
                            f"{', '.join(cols) or 'none'}")
    n = len(cols["id"])
    lengths = {k: len(v) for k, v in cols.items() if len(v) != n}
    if lengths:
        raise GeometryError(f"{source}: columns of different lengths ({n} ids; {lengths})")
    ids = np.asarray(cols["id"])
    if ids.dtype.kind not in "iu" or np.any(ids < 0):
        raise GeometryError(f"{source}: cell ids must be non-negative integers")
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != n:
        raise GeometryError(f"{source}: {n - len(np.unique(ids))} cell ids appear twice")
    numbers, layer = np.unique(np.asarray(cols["layer"]).astype(np.int64), return_inverse=True)
    xyz = {k: np.asarray(cols[k], np.float64) for k in "xyz"}
    if not all(np.isfinite(v).all() for v in xyz.values()):
        raise GeometryError(f"{source}: x, y, z must be finite numbers")
    corners, n_corners = _shape_corners(cols, n)
    per_layer_t = (np.array([m.sensor_thickness or np.nan for m in cfg.layers])[layer]
                   if cfg.layers is not None else np.full(n, cfg.sensor_thickness or np.nan))
    thickness = np.asarray(cols.get("thickness", per_layer_t), np.float64)
    thickness = np.where(np.isnan(thickness), per_layer_t, thickness)
    if np.any(~(thickness > 0)):
        raise GeometryError(f"{source}: every cell needs a sensor thickness above 0 mm")
    poly = outlines(corners, n_corners)
    area = shapely.area(poly)
    if np.any(~(area > 0)) or not shapely.is_valid(poly).all():
        raise GeometryError(f"{source}: {int((~shapely.is_valid(poly) | ~(area > 0)).sum())} "
                            "cells have outlines that are not simple polygons")
    members = [np.flatnonzero(layer == i) for i in range(len(numbers))]
    gap = np.array([np.median(thickness[m]) for m in members])  # a layer's sensor slot (mm)
    gap = np.where(np.isnan(per_layer_t[[m[0] for m in members]]), gap,
                   per_layer_t[[m[0] for m in members]])
    layers = _layers(numbers, [xyz["z"][m] for m in members], gap, cfg)
    cells = {"key": ids, "layer": layer.astype(np.int16), "x": xyz["x"].astype(np.float32),
             "y": xyz["y"].astype(np.float32), "z": xyz["z"].astype(np.float32),
             "type": _types(cols["type"]), "area": area.astype(np.float32),
             "thickness": thickness.astype(np.float32), "corners": corners.astype(np.float32),
             "n_corners": n_corners.astype(np.int8)}
    config = {**cfg.model_dump(mode="json"), "layer_numbers": numbers.tolist()}
    return layers, TableSegmentation(), cells, config

