"""The Fast Calorimeter Simulation Challenge 2022's voxels as a geometry (``--builder
calochallenge``): every voxel of a binning XML is a cell, so a challenge dataset's showers are
showers on this geometry's cells and every fastshower stage runs on them.

Voxels are cylindrical bins around the particle's axis, which is the z axis here (the challenge
records no position or direction: its primaries start at the origin along +z). Per layer:
radial edges r_edges (mm) x n_bin_alpha angular bins covering [-pi, pi); voxel index =
offset(layer) + i_alpha * n_r + i_r, layers in file order; ``r_edges="0"`` declares an empty
layer (a layer without cells). Cell keys pack (layer, i_alpha, i_r), so cell id = voxel index.

Approximations, named: the challenge's detectors are described only by their voxels; the
absorber stack in front of each layer (for depths in X0, and for simulating this geometry with
Geant4) is an option, by default that of datasets 2 and 3 (1.4 mm tungsten, 0.3 mm silicon);
dataset 1's ATLAS-like layers have no such simple stack, and their depths with the default are
nominal. Neighbours: the two angular and two radial neighbours in a layer (cells that share an
edge; the cells around r = 0 all share one point and are not linked across it) and the
nearest-centre cell of the nearest layers with cells.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fastshower.errors import GeometryError
from fastshower.geometry.layers import lay_out
from fastshower.geometry.neighbours import pair_codes, unique
from fastshower.geometry.segmentation import SILICON, Segmentation, pack_key

PARTICLE_NAMES = {11: "electron", -11: "electron", 22: "photon", 211: "pion", -211: "pion"}
ARC_STEP = math.pi / 16  # largest angle between two corners along a voxel's arc (polygons)


@dataclass
class Binning:
    """Per layer: radial edges (mm; an empty tuple for an empty layer) and angular bin count;
    the particle's PDG id (the XML's ``pid``)."""

    r_edges: list[tuple[float, ...]]
    n_alpha: list[int]
    pid: int = 11

    @property
    def sizes(self) -> np.ndarray:
        return np.array([max(len(r) - 1, 0) * a for r, a in zip(self.r_edges, self.n_alpha,
                                                                 strict=True)], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def n_voxels(self) -> int:
        return int(self.sizes.sum())

    def to_xml(self) -> str:
        root = ET.Element("Bins")
        b = ET.SubElement(root, "Bin", pid=str(self.pid),
                          name=PARTICLE_NAMES.get(self.pid, "electron"))
        for i, (r, a) in enumerate(zip(self.r_edges, self.n_alpha, strict=True)):
            ET.SubElement(b, "Layer", id=str(i),
                          r_edges=",".join(f"{v:g}" for v in r) if r else "0",
                          n_bin_alpha=str(a))
        ET.indent(root)
        return ET.tostring(root, encoding="unicode") + "\n"

    @staticmethod
    def from_xml(text: str, source: str = "binning XML") -> Binning:
        """The binning of the XML's (first) ``Bin``; one clear error for anything else."""
        try:
            b = ET.fromstring(text).find("Bin")
            if b is None:
                raise ValueError("no <Bin> element")
            r_edges, n_alpha = [], []
            for layer in b.findall("Layer"):
                edges = tuple(float(v) for v in layer.get("r_edges", "").split(","))
                r_edges.append(edges if len(edges) > 1 else ())
                n_alpha.append(int(layer.get("n_bin_alpha", "")))
            binning = Binning(r_edges, n_alpha, int(b.get("pid", "11")))
        except (ET.ParseError, ValueError, TypeError) as err:
            raise GeometryError(f"{source} is not a CaloChallenge binning XML: {err}") from None
        binning.check(source)
        return binning

    @staticmethod
    def read(path: str | Path) -> Binning:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise GeometryError(f"cannot read binning XML {path}: {err.strerror}") from None
        return Binning.from_xml(text, str(path))

    def check(self, source: str = "binning") -> None:
        """Edges rising from 0, at least one angular bin, at least one layer with voxels."""
        for i, (r, a) in enumerate(zip(self.r_edges, self.n_alpha, strict=True)):
            if r and (r[0] != 0 or any(b <= a_ for a_, b in zip(r, r[1:], strict=False))):
                raise GeometryError(f"{source}: layer {i}'s r_edges must rise from 0")
            if a < 1:
                raise GeometryError(f"{source}: layer {i} has n_bin_alpha {a} (at least 1)")
        if not self.r_edges or self.n_voxels == 0:
            raise GeometryError(f"{source} declares no voxels")


class CaloChallengeConfig(BaseModel):
    """A binning (per layer r_edges in mm, [] for an empty layer; n_alpha) and the nominal
    material of each layer: absorbers [(material, mm)] in front of a silicon sensor."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r_edges: list[list[float]]
    n_alpha: list[int]
    pid: int = 11
    absorbers: list[tuple[str, float]] = [("G4_W", 1.4)]
    sensor_thickness: float = Field(0.3, gt=0)
    z_front: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _binning(self) -> CaloChallengeConfig:
        if len(self.r_edges) != len(self.n_alpha):
            raise ValueError("r_edges and n_alpha need one entry per layer")
        try:
            self.binning.check()
        except GeometryError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def binning(self) -> Binning:
        return Binning([tuple(r) for r in self.r_edges], list(self.n_alpha), self.pid)

    @classmethod
    def of(cls, binning: Binning, **materials) -> CaloChallengeConfig:
        return cls(r_edges=[list(r) for r in binning.r_edges], n_alpha=binning.n_alpha,
                   pid=binning.pid, **materials)


class PolarSegmentation(Segmentation):
    """(layer, x, y) -> key of the voxel holding the point's radius and angle about z."""

    kind = "polar"

    def __init__(self, r_edges: list[list[float]], n_alpha: list[int]):
        self.r_edges = [list(map(float, r)) for r in r_edges]
        self.n_alpha = np.asarray(n_alpha, dtype=np.int64)
        self.n_r = np.array([max(len(r) - 1, 0) for r in self.r_edges], dtype=np.int64)
        width = max(len(r) for r in self.r_edges)
        self._edges = np.full((len(self.r_edges), width), np.inf)
        for i, r in enumerate(self.r_edges):
            self._edges[i, :len(r)] = r

    def to_dict(self) -> dict:
        return {"kind": self.kind, "r_edges": self.r_edges, "n_alpha": self.n_alpha.tolist()}

    @classmethod
    def from_params(cls, d: dict) -> PolarSegmentation:
        return cls(**d)

    def keys(self, layer, x, y) -> np.ndarray:
        layer = np.asarray(layer, dtype=np.int64)
        r, alpha = np.hypot(x, y), np.arctan2(y, x)
        i_r = (self._edges[layer] <= np.asarray(r)[..., None]).sum(-1) - 1
        n_a = self.n_alpha[layer]
        i_a = np.minimum(np.floor((alpha + np.pi) / (2 * np.pi) * n_a).astype(np.int64), n_a - 1)
        ok = (i_r >= 0) & (i_r < self.n_r[layer])
        return np.where(ok, pack_key(layer, 0, np.where(ok, i_a, 0), np.where(ok, i_r, 0)), -1)

    def in_layer_pairs(self, keys: np.ndarray) -> np.ndarray:
        """Pair codes of cells sharing an edge: (i_a +- 1 mod n_alpha, i_r) and (i_a, i_r + 1)."""
        layer, i_a, i_r = unpack(keys)
        n_a, n_r = self.n_alpha[layer], self.n_r[layer]
        ids = np.arange(len(keys))
        pairs = []
        for ok, other in (
                (n_a > 1, pack_key(layer, 0, (i_a + 1) % n_a, i_r)),
                (i_r + 1 < n_r, pack_key(layer, 0, i_a, i_r + 1))):
            pos = np.clip(np.searchsorted(keys, other), 0, len(keys) - 1)
            ok = ok & (keys[pos] == other)
            pairs.append(pair_codes(ids[ok], pos[ok]))
        return unique(np.concatenate(pairs))


def unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layer, i_alpha, i_r) of polar cell keys (pack_key(layer, 0, i_alpha, i_r))."""
    keys = np.asarray(keys, dtype=np.int64)
    return keys >> 56, (keys >> 24) & ((1 << 30) - 1), keys & ((1 << 24) - 1)


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin from the C library (no CPU-dependent SIMD last bits: geometry identity)."""
    return (np.array([math.cos(a) for a in angles]), np.array([math.sin(a) for a in angles]))


def _layer_cells(index: int, z: float, r_edges: tuple[float, ...], n_alpha: int,
                 thickness: float) -> dict[str, np.ndarray]:
    """Cell columns of one layer's voxels, in voxel order (alpha major, r minor)."""
    r = np.asarray(r_edges)
    n_r = len(r) - 1
    width = 2 * np.pi / n_alpha
    i_a, i_r = (a.ravel() for a in np.meshgrid(np.arange(n_alpha), np.arange(n_r),
                                               indexing="ij"))
    lo, hi = r[i_r], r[i_r + 1]
    centre_a = -np.pi + (i_a + 0.5) * width
    cos_c, sin_c = _cos_sin(centre_a)
    mid = 0.5 * (lo + hi)
    m = max(1, math.ceil(width / ARC_STEP))  # corners along each arc: m + 1
    steps = -np.pi + (i_a[:, None] + np.arange(m + 1)[None] / m) * width
    cos_s, sin_s = (v.reshape(steps.shape) for v in _cos_sin(steps.ravel()))
    outer = np.stack([hi[:, None] * cos_s, hi[:, None] * sin_s], -1)
    inner = np.stack([lo[:, None] * cos_s, lo[:, None] * sin_s], -1)[:, ::-1]
    corners = np.concatenate([outer, inner], 1)  # r = 0: the inner arc is one repeated point
    n = len(i_a)
    return {"key": pack_key(index, 0, i_a, i_r), "layer": np.full(n, index, np.int16),
            "x": (mid * cos_c).astype(np.float32), "y": (mid * sin_c).astype(np.float32),
            "z": np.full(n, z, np.float32), "type": np.full(n, SILICON, np.int8),
            "area": (0.5 * (hi ** 2 - lo ** 2) * width).astype(np.float32),
            "thickness": np.full(n, thickness, np.float32),
            "corners": corners.astype(np.float32),
            "n_corners": np.full(n, corners.shape[1], np.int8)}


def build(cfg: CaloChallengeConfig):
    """Layers, segmentation and per-layer cell columns of a challenge binning."""
    n = len(cfg.r_edges)
    layers = lay_out([("calochallenge", [list(cfg.absorbers)] * n, cfg.sensor_thickness, None)],
                     z_front=cfg.z_front)
    seg = PolarSegmentation(cfg.r_edges, cfg.n_alpha)
    per_layer = [_layer_cells(lay.index, lay.z, tuple(r), a, cfg.sensor_thickness)
                 for lay, r, a in zip(layers, cfg.r_edges, cfg.n_alpha, strict=True) if r]
    return layers, seg, per_layer
