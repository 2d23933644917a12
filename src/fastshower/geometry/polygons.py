"""Vectorised polygon helpers over padded corner arrays (n, K, 2), NaN-padded, via shapely."""

from __future__ import annotations

import math

import numpy as np
import shapely


def from_shapely(geoms: np.ndarray, max_corners: int | None = None):
    """(corners (n, K, 2) float32 NaN-padded, n_corners, area, centroid (n, 2)) of polygons.

    A geometry split into several polygons keeps its largest part; empty ones get 0 corners.
    """
    n = len(geoms)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    nonempty = ~shapely.is_empty(parts) & (shapely.get_type_id(parts) == 3)  # polygons only
    parts, owner = parts[nonempty], owner[nonempty]
    area = shapely.area(parts)
    order = np.lexsort((-area, owner))
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    best = order[first]
    polys = np.full(n, None, dtype=object)
    polys[owner[best]] = parts[best]
    have = np.array([p is not None for p in polys])
    rings = shapely.get_exterior_ring(polys[have])
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(ring_of, minlength=len(rings)) - 1  # drop the closing point
    k = int(counts.max(initial=0)) if max_corners is None else max_corners
    start = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    pos = np.arange(len(coords)) - start[ring_of]
    keep = pos < counts[ring_of]
    out = np.full((n, k, 2), np.nan, dtype=np.float32)
    rows = np.flatnonzero(have)
    out[rows[ring_of[keep]], pos[keep]] = coords[keep]
    n_corners = np.zeros(n, dtype=np.int8)
    n_corners[rows] = counts
    areas = np.zeros(n)
    areas[rows] = shapely.area(polys[have])
    centroid = np.zeros((n, 2))
    centroid[rows] = shapely.get_coordinates(shapely.centroid(polys[have]))
    return out, n_corners, areas, centroid


def pad_corners(corners: np.ndarray, width: int) -> np.ndarray:
    """(n, k, 2) corners NaN-padded to (n, width, 2); returned as is when already that wide."""
    if corners.shape[1] == width:
        return corners
    out = np.full((len(corners), width, 2), np.nan, dtype=np.float32)
    out[:, : corners.shape[1]] = corners
    return out


def regular_polygon(radius: float, n_sides: int) -> np.ndarray:
    """(n, 2) vertices of a regular polygon with vertices at angles 2*pi*k/n (sin and cos
    from the C library: no CPU-dependent SIMD last bits)."""
    a = [2 * math.pi * k / n_sides for k in range(n_sides)]
    return radius * np.array([[math.cos(t), math.sin(t)] for t in a])
