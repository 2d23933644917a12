"""Regular cartesian calorimeter (CLIC-like by default): sections of identical layers with square
cells centred on the z axis, e.g. a silicon-tungsten ECAL followed by a scintillator-steel HCAL.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fastshower.geometry.layers import lay_out
from fastshower.geometry.segmentation import SCINTILLATOR, SILICON, Segmentation, pack_key


class GridSection(BaseModel):
    """Identical layers: absorber stack [(material, mm)], sensor, cells (lengths in mm)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    n_layers: int = Field(gt=0)
    nx: int = Field(gt=0)
    ny: int = Field(gt=0)
    cell_size: float = Field(gt=0)
    absorbers: list[tuple[str, float]]
    sensor: str = "silicon"
    sensor_thickness: float = Field(gt=0)
    gap: float = Field(ge=0, default=0.0)


class GridConfig(BaseModel):
    """CLIC-like: ECAL 25 x 51 x 51 (Si-W, 5.1 mm cells), HCAL 60 x 11 x 11 (scint-steel)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    z_front: float = Field(1500.0, gt=0)
    sections: list[GridSection] = [
        GridSection(name="ECAL", n_layers=25, nx=51, ny=51, cell_size=5.1,
                    absorbers=[("G4_W", 2.8), ("PCB", 1.0)], sensor="silicon",
                    sensor_thickness=0.5, gap=1.0),
        GridSection(name="HCAL", n_layers=60, nx=11, ny=11, cell_size=30.0,
                    absorbers=[("G4_STAINLESS-STEEL", 19.0), ("PCB", 1.0)],
                    sensor="scintillator", sensor_thickness=3.0, gap=1.0),
    ]


class GridSegmentation(Segmentation):
    """Per layer: nx x ny square cells of side ``cell_size`` centred on (0, 0)."""

    kind = "grid"

    def __init__(self, nx, ny, cell_size):
        self.nx = np.asarray(nx, dtype=np.int64)
        self.ny = np.asarray(ny, dtype=np.int64)
        self.cell_size = np.asarray(cell_size, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "nx": self.nx.tolist(), "ny": self.ny.tolist(),
                "cell_size": self.cell_size.tolist()}

    @classmethod
    def from_params(cls, d: dict) -> GridSegmentation:
        return cls(**d)

    def index(self, layer, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Lattice indices (i, j) of points (x, y) in mm on the given layers (outside the
        layer's 0..nx-1, 0..ny-1 for points off it)."""
        layer = np.asarray(layer, dtype=np.int64)
        size = self.cell_size[layer]
        return (np.floor(np.asarray(x) / size + self.nx[layer] / 2).astype(np.int64),
                np.floor(np.asarray(y) / size + self.ny[layer] / 2).astype(np.int64))

    def centre(self, layer, i, j) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in mm of the centres of lattice cells (i, j) on the given layers."""
        layer = np.asarray(layer, dtype=np.int64)
        size = self.cell_size[layer]
        return ((np.asarray(i) - self.nx[layer] / 2 + 0.5) * size,
                (np.asarray(j) - self.ny[layer] / 2 + 0.5) * size)

    def on_lattice(self, layer, i, j) -> np.ndarray:
        """Whether lattice indices (i, j) are a cell of the given layers."""
        return (i >= 0) & (i < self.nx[layer]) & (j >= 0) & (j < self.ny[layer])

    def keys(self, layer, x, y) -> np.ndarray:
        layer = np.asarray(layer, dtype=np.int64)
        i, j = self.index(layer, x, y)
        ok = self.on_lattice(layer, i, j)
        return np.where(ok, pack_key(layer, 0, np.where(ok, i, 0), np.where(ok, j, 0)), -1)


def lattice_cells(geom) -> np.ndarray:
    """(layers, max nx, max ny) cell id of every lattice position (i, j) of every layer of a
    grid geometry ``geom``, -1 where a layer has fewer cells: its lookup of each cell centre."""
    seg = geom.segmentation
    layer, i, j = np.indices((len(geom.layers), int(seg.nx.max()), int(seg.ny.max())))
    return np.where(seg.on_lattice(layer, i, j), geom.lookup(layer, *seg.centre(layer, i, j)), -1)


def _air(gap: float) -> list[tuple[str, float]]:
    return [("G4_AIR", gap)] if gap > 0 else []


def build(cfg: GridConfig):
    """Layers, segmentation and per-layer cell columns of the grid calorimeter."""
    layers = lay_out(
        [(s.name, [_air(s.gap) + list(s.absorbers)] * s.n_layers, s.sensor_thickness, None)
         for s in cfg.sections],
        z_front=cfg.z_front,
    )
    per_section = [s for s in cfg.sections for _ in range(s.n_layers)]
    seg = GridSegmentation([s.nx for s in per_section], [s.ny for s in per_section],
                           [s.cell_size for s in per_section])
    per_layer = []
    for lay, s in zip(layers, per_section, strict=True):
        i, j = np.meshgrid(np.arange(s.nx), np.arange(s.ny), indexing="ij")
        i, j = i.ravel(), j.ravel()
        x, y = seg.centre(lay.index, i, j)
        h = s.cell_size / 2
        offsets = np.array([[-h, -h], [h, -h], [h, h], [-h, h]], dtype=np.float32)
        n = len(i)
        per_layer.append({
            "key": pack_key(lay.index, 0, i, j),
            "layer": np.full(n, lay.index, dtype=np.int16),
            "x": x.astype(np.float32), "y": y.astype(np.float32),
            "z": np.full(n, lay.z, dtype=np.float32),
            "type": np.full(n, SILICON if s.sensor == "silicon" else SCINTILLATOR, np.int8),
            "area": np.full(n, s.cell_size**2, dtype=np.float32),
            "thickness": np.full(n, s.sensor_thickness, dtype=np.float32),
            "corners": np.stack([x, y], -1).astype(np.float32)[:, None, :] + offsets[None],
            "n_corners": np.full(n, 4, dtype=np.int8),
        })
    return layers, seg, per_layer
