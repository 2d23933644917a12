"""HGCAL-like endcap calorimeter: 26 CE-E + 21 CE-H layers, hexagonal silicon cells on 8-inch
wafers and scintillator tiles, following the CMS HGCAL design (simplifications in docs/geometry.md).

Coverage boundaries are regular 288-gons (one side per 1.25-degree tile sector): the silicon region
of a layer lies between an inner and an outer polygon, scintillator tiles between the
silicon/scintillator border polygon and the outer one. Silicon cells crossing a boundary are
clipped to it, so cells tile each layer with no gaps and no overlaps.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import shapely
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fastshower.geometry.hexlattice import HexLattice
from fastshower.geometry.identity import length_quanta
from fastshower.geometry.layers import Layer, Slab, lay_out, mirror
from fastshower.geometry.polygons import from_shapely, pad_corners, regular_polygon
from fastshower.geometry.segmentation import (
    SCINTILLATOR,
    SILICON,
    Segmentation,
    pack_key,
    pack_pair,
)

N_CE_E, N_CE_H, N_CE_H_SILICON = 26, 21, 7
MIN_CELL_AREA = 1e-3  # mm^2: clipped slivers smaller than this are dropped (lookup gives -1)


class HGCalConfig(BaseModel):
    """HGCAL-like endcap. Lengths in mm, angles in degrees."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    region: Literal["roi", "full"] = "roi"
    eta: float = Field(2.0, gt=0)
    phi_deg: float = 90.0
    roi_radius: float = Field(150.0, gt=0)
    endcaps: Literal["auto", "positive", "both"] = "auto"
    z_front: float = Field(3210.5, gt=0)
    z_ce_h: float = Field(3620.0, gt=0)
    z_back: float = Field(5140.0, gt=0)
    eta_min: float = Field(1.5, gt=0)
    eta_max: float = Field(3.0, gt=0)
    wafer_pitch: float = Field(167.4, gt=0)
    cell_area_ld: float = Field(118.0, gt=0)
    cell_area_hd: float = Field(52.0, gt=0)
    eta_hd: float = Field(2.4, gt=0)
    eta_200um: float = Field(2.1, gt=0)
    tile_dphi_deg: float = Field(1.25, gt=0, le=90)
    border_eta_first: float = Field(1.65, gt=0)
    border_eta_last: float = Field(2.35, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> HGCalConfig:
        if not self.z_front < self.z_ce_h < self.z_back:
            raise ValueError("need z_front < z_ce_h < z_back (mm)")
        if not self.eta_min < self.eta_max:
            raise ValueError("need eta_min < eta_max")
        if self.region == "roi" and not self.eta_min <= self.eta <= self.eta_max:
            raise ValueError(f"the region's eta {self.eta} lies outside the detector "
                             f"({self.eta_min} to {self.eta_max})")
        return self

    def both_endcaps(self) -> bool:
        return self.endcaps == "both" or (self.endcaps == "auto" and self.region == "full")


def layer_stack(cfg: HGCalConfig) -> list[Layer]:
    """The 47 sampling layers of one endcap, at +z."""
    pcb, cuw, cu, ss = ("PCB", 1.6), ("CuW", 1.4), ("G4_Cu", 6.35), ("G4_STAINLESS-STEEL", 0.3)
    ce_e: list[list[Slab]] = []
    for cassette, lead in enumerate(np.linspace(2.8, 8.2, N_CE_E // 2)):
        front = [pcb] if cassette else []  # hexaboard of the previous cassette's second layer
        ce_e.append(front + [ss, ("G4_Pb", round(float(lead), 2)), ss, pcb])
        ce_e.append([cuw, cu, cuw])
    ce_h: list[list[Slab]] = [
        [("G4_STAINLESS-STEEL", 41.5 if i < N_CE_H_SILICON else 60.7), cu, pcb]
        for i in range(N_CE_H)
    ]
    layers = lay_out(
        [("CE-E", ce_e, 0.3, cfg.z_ce_h - cfg.z_front),
         ("CE-H", ce_h, 3.0, cfg.z_back - cfg.z_ce_h)],
        z_front=cfg.z_front,
    )
    return mirror(layers) if cfg.both_endcaps() else layers


def _radius_at(z, eta) -> np.ndarray:
    """Radius (mm) at |z| (mm) of pseudorapidity eta. sinh comes from the C library per value,
    not from numpy's SIMD loops, whose last bits depend on the CPU (geometry.identity)."""
    z, eta = np.broadcast_arrays(np.abs(np.asarray(z, dtype=np.float64)),
                                 np.asarray(eta, dtype=np.float64))
    return z / np.array([math.sinh(e) for e in eta.ravel()]).reshape(eta.shape)


def _closer(distance_mm, radius_mm) -> np.ndarray:
    """distance < radius compared in 1 um quanta, so that distances equal in exact arithmetic
    compare the same way on every CPU (a last-bit difference never flips such a cell)."""
    return length_quanta(distance_mm) < length_quanta(radius_mm)


def _in_window(distance_mm, radius_mm) -> np.ndarray:
    """distance <= radius in 1 um quanta (a cell centre 0.5 um inside the edge stays in)."""
    return length_quanta(distance_mm) <= length_quanta(radius_mm)


class HGCalSegmentation(Segmentation):
    """Hexagonal silicon cells on hexagonal wafers plus (r, phi) scintillator tiles."""

    kind = "hgcal"

    def __init__(self, z, r_in, r_out, r_border, r_hd, r_200, wafer_pitch, cell_area_ld,
                 cell_area_hd, n_sectors):
        self.z = np.asarray(z, dtype=np.float64)
        self.r_in = np.asarray(r_in, dtype=np.float64)
        self.r_out = np.asarray(r_out, dtype=np.float64)
        self.r_border = np.asarray(r_border, dtype=np.float64)  # inf: no scintillator
        self.r_hd = np.asarray(r_hd, dtype=np.float64)
        self.r_200 = np.asarray(r_200, dtype=np.float64)
        self.wafer_pitch, self.n_sectors = float(wafer_pitch), int(n_sectors)
        self.cell_area_ld, self.cell_area_hd = float(cell_area_ld), float(cell_area_hd)
        self.wafers = HexLattice(wafer_pitch, 0.0)
        self.cells_ld = HexLattice(np.sqrt(2 * cell_area_ld / np.sqrt(3)), 30.0)
        self.cells_hd = HexLattice(np.sqrt(2 * cell_area_hd / np.sqrt(3)), 30.0)
        self.dphi = 2 * np.pi / self.n_sectors
        self.cos_half = math.cos(self.dphi / 2)

    @classmethod
    def from_config(cls, cfg: HGCalConfig, layers: list[Layer]) -> HGCalSegmentation:
        z = np.array([lay.z for lay in layers])
        border = np.full(len(layers), np.inf)
        per_endcap = N_CE_E + N_CE_H
        mixed = np.arange(N_CE_E + N_CE_H_SILICON, per_endcap)
        eta_b = np.linspace(cfg.border_eta_first, cfg.border_eta_last, len(mixed))
        for start in range(0, len(layers), per_endcap):
            border[start + mixed] = _radius_at(z[start + mixed], eta_b)
        return cls(z=z, r_in=_radius_at(z, cfg.eta_max), r_out=_radius_at(z, cfg.eta_min),
                   r_border=border, r_hd=_radius_at(z, cfg.eta_hd),
                   r_200=_radius_at(z, cfg.eta_200um), wafer_pitch=cfg.wafer_pitch,
                   cell_area_ld=cfg.cell_area_ld, cell_area_hd=cfg.cell_area_hd,
                   n_sectors=round(360.0 / cfg.tile_dphi_deg))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "z": self.z.tolist(), "r_in": self.r_in.tolist(),
                "r_out": self.r_out.tolist(),
                "r_border": [None if np.isinf(r) else r for r in self.r_border],
                "r_hd": self.r_hd.tolist(), "r_200": self.r_200.tolist(),
                "wafer_pitch": self.wafer_pitch, "cell_area_ld": self.cell_area_ld,
                "cell_area_hd": self.cell_area_hd, "n_sectors": self.n_sectors}

    @classmethod
    def from_params(cls, d: dict) -> HGCalSegmentation:
        d = dict(d)
        d["r_border"] = [np.inf if r is None else r for r in d["r_border"]]
        return cls(**d)

    # --- point -> key ----------------------------------------------------------------------
    def sector(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile sector index and the distance u of the point along the sector's bisector.

        A 288-gon of vertex radius R is exactly the set u < R cos(dphi / 2).
        """
        phi = np.mod(np.arctan2(y, x), 2 * np.pi)
        k = np.minimum((phi / self.dphi).astype(np.int64), self.n_sectors - 1)
        phic = (k + 0.5) * self.dphi
        return k, x * np.cos(phic) + y * np.sin(phic)

    def keys(self, layer, x, y) -> np.ndarray:
        layer = np.asarray(layer, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        k, u = self.sector(x, y)
        c = self.cos_half
        inside = (u >= self.r_in[layer] * c) & (u < self.r_out[layer] * c)
        scint = inside & (u >= self.r_border[layer] * c)
        silicon = inside & ~scint
        out = np.full(x.shape, -1, dtype=np.int64)

        wi, wj = self.wafers.index(x, y)
        wx, wy = self.wafers.centre(wi, wj)
        hd = np.hypot(wx, wy) < self.r_hd[layer]
        ci, cj = self.cells_ld.index(x - wx, y - wy)
        if hd.any():
            ci[hd], cj[hd] = self.cells_hd.index(x[hd] - wx[hd], y[hd] - wy[hd])
        key_si = pack_key(layer, SILICON, pack_pair(wi, wj, 15), pack_pair(ci, cj, 12))
        out[silicon] = key_si[silicon]

        with np.errstate(divide="ignore", invalid="ignore"):
            ring = np.floor(np.log(u / (self.r_border[layer] * c)) / np.log1p(self.dphi))
        key_sc = pack_key(layer, SCINTILLATOR, np.where(scint, ring, 0).astype(np.int64), k)
        out[scint] = key_sc[scint]
        return out

    # --- building cells --------------------------------------------------------------------
    def wafer_template(self, hd: bool):
        """Cells of one wafer (local lattice indices, clipped polygons relative to its centre)."""
        lattice = self.cells_hd if hd else self.cells_ld
        ci, cj = lattice.sites_within(self.wafers.circumradius + lattice.circumradius)
        cx, cy = lattice.centre(ci, cj)
        hexes = shapely.polygons(np.stack([cx, cy], -1)[:, None, :] + lattice.corners()[None])
        wafer = shapely.Polygon(self.wafers.corners())
        corners, nc, area, centroid = from_shapely(shapely.intersection(hexes, wafer))
        keep = area > MIN_CELL_AREA
        return ci[keep], cj[keep], corners[keep], nc[keep], area[keep], centroid[keep]

    def build_layer(self, layer: int, window: tuple[float, float, float] | None) -> dict:
        """Cells of one layer; ``window`` = (x, y, radius) keeps cells whose centre lies in it."""
        cols = [self._silicon_cells(layer, window)]
        if np.isfinite(self.r_border[layer]):
            cols.append(self._tiles(layer, window))
        width = max(c["corners"].shape[1] for c in cols)
        for c in cols:
            c["corners"] = pad_corners(c["corners"], width)
        return {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}

    def _silicon_cells(self, layer, window) -> dict:
        r_in, r_si = self.r_in[layer], min(self.r_out[layer], self.r_border[layer])
        rw = self.wafers.circumradius
        wi, wj = self.wafers.sites_within(r_si + rw)
        wx, wy = self.wafers.centre(wi, wj)
        ok = _closer(r_in * self.cos_half - rw, np.hypot(wx, wy))
        if window is not None:
            ok &= _closer(np.hypot(wx - window[0], wy - window[1]), window[2] + rw)
        wi, wj, wx, wy = wi[ok], wj[ok], wx[ok], wy[ok]
        hd_wafer = _closer(np.hypot(wx, wy), self.r_hd[layer])
        parts = []
        for hd in (False, True):
            sel = hd_wafer == hd
            if not sel.any():
                continue
            ci, cj, corners, nc, area, cen = self.wafer_template(hd)
            nw, nt = int(sel.sum()), len(ci)
            offset = np.stack([wx[sel], wy[sel]], -1)
            parts.append({
                "wi": np.repeat(wi[sel], nt), "wj": np.repeat(wj[sel], nt),
                "ci": np.tile(ci, nw), "cj": np.tile(cj, nw),
                "corners": (corners[None] + offset[:, None, None, :].astype(np.float32))
                .reshape(nw * nt, -1, 2),
                "n_corners": np.tile(nc, nw), "area": np.tile(area, nw),
                "centre": (cen[None] + offset[:, None, :]).reshape(-1, 2),
                "wafer_r": np.repeat(np.hypot(wx[sel], wy[sel]), nt),
            })
        if not parts:
            return _columns(key=np.zeros(0, np.int64), layer=layer, z=self.z[layer],
                            cell_type=SILICON, thickness=0.3, centre=np.zeros((0, 2)),
                            area=[], corners=np.zeros((0, 6, 2), np.float32), n_corners=[])
        width = max(p["corners"].shape[1] for p in parts)
        for p in parts:
            p["corners"] = pad_corners(p["corners"], width)
        c = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        c = self._clip_to_region(c, layer, r_in, r_si)
        if window is not None:
            c = _select(c, _in_window(np.hypot(*(c["centre"] - window[:2]).T), window[2]))
        thickness = np.where(_closer(c["wafer_r"], self.r_hd[layer]), 0.12,
                             np.where(_closer(c["wafer_r"], self.r_200[layer]), 0.2, 0.3))
        return _columns(
            key=pack_key(layer, SILICON, pack_pair(c["wi"], c["wj"], 15),
                         pack_pair(c["ci"], c["cj"], 12)),
            layer=layer, z=self.z[layer], cell_type=SILICON, thickness=thickness,
            centre=c["centre"], area=c["area"], corners=c["corners"], n_corners=c["n_corners"],
        )

    def _clip_to_region(self, c: dict, layer: int, r_in: float, r_si: float) -> dict:
        """Clip cells crossing the inner or outer boundary polygon; drop those outside."""
        r = np.hypot(*c["centre"].T)
        reach = np.nanmax(np.hypot(*(c["corners"] - c["centre"][:, None, :]).transpose(2, 0, 1)),
                          axis=1)
        lo, hi = r - reach, r + reach
        inside = ~_closer(lo, r_in) & _closer(hi, r_si * self.cos_half)
        outside = _closer(hi, r_in * self.cos_half) | ~_closer(lo, r_si)
        cross = ~inside & ~outside
        if cross.any():
            region = shapely.Polygon(regular_polygon(r_si, self.n_sectors),
                                     holes=[regular_polygon(r_in, self.n_sectors)])
            polys = shapely.polygons(np.where(np.isnan(c["corners"][cross]),
                                              c["corners"][cross][:, :1], c["corners"][cross]))
            corners, nc, area, cen = from_shapely(shapely.intersection(polys, region))
            width = max(corners.shape[1], c["corners"].shape[1])
            c["corners"] = pad_corners(c["corners"], width)
            c["corners"][cross] = pad_corners(corners, width)
            c["n_corners"][cross], c["area"][cross], c["centre"][cross] = nc, area, cen
        return _select(c, ~outside & (c["area"] > MIN_CELL_AREA))

    def _tiles(self, layer, window) -> dict:
        rb, ro = self.r_border[layer], self.r_out[layer]
        n_rings = math.ceil(math.log(ro / rb) / math.log1p(self.dphi))
        edges = np.minimum([rb * math.pow(1 + self.dphi, i) for i in range(n_rings + 1)], ro)
        ring, k = np.meshgrid(np.arange(n_rings), np.arange(self.n_sectors), indexing="ij")
        ring, k = ring.ravel(), k.ravel()
        r = np.stack([edges[ring], edges[ring], edges[ring + 1], edges[ring + 1]], -1)
        sector = np.arange(self.n_sectors + 1) * self.dphi
        cos, sin = (np.array([f(a) for a in sector]) for f in (math.cos, math.sin))
        k4 = np.stack([k, k + 1, k + 1, k], -1)
        corners = np.stack([r * cos[k4], r * sin[k4]], -1)
        polys = shapely.polygons(corners)
        centre = shapely.get_coordinates(shapely.centroid(polys))
        keep = np.ones(len(ring), dtype=bool)
        if window is not None:
            keep = _in_window(np.hypot(*(centre - window[:2]).T), window[2])
        return _columns(
            key=pack_key(layer, SCINTILLATOR, ring, k)[keep], layer=layer, z=self.z[layer],
            cell_type=SCINTILLATOR, thickness=3.0, centre=centre[keep],
            area=shapely.area(polys)[keep], corners=corners[keep].astype(np.float32),
            n_corners=np.full(int(keep.sum()), 4, dtype=np.int8),
        )


def _select(c: dict, mask: np.ndarray) -> dict:
    return {k: v[mask] for k, v in c.items()}


def _columns(*, key, layer, z, cell_type, thickness, centre, area, corners, n_corners) -> dict:
    n = len(key)
    return {
        "key": key.astype(np.int64),
        "layer": np.full(n, layer, dtype=np.int16),
        "x": centre[:, 0].astype(np.float32),
        "y": centre[:, 1].astype(np.float32),
        "z": np.full(n, z, dtype=np.float32),
        "type": np.full(n, cell_type, dtype=np.int8),
        "area": np.asarray(area, dtype=np.float32),
        "thickness": np.broadcast_to(np.asarray(thickness, dtype=np.float32), (n,)).copy(),
        "corners": corners,
        "n_corners": np.asarray(n_corners, dtype=np.int8),
    }


def build(cfg: HGCalConfig):
    """Layers, segmentation and per-layer cell columns of the HGCAL-like endcap(s)."""
    layers = layer_stack(cfg)
    seg = HGCalSegmentation.from_config(cfg, layers)
    per_layer = []
    for lay in layers:
        window = None
        if cfg.region == "roi":
            r = float(_radius_at(lay.z, cfg.eta))
            phi = math.radians(cfg.phi_deg)
            window = np.array([r * math.cos(phi), r * math.sin(phi), cfg.roi_radius])
        per_layer.append(seg.build_layer(lay.index, window))
    return layers, seg, per_layer
