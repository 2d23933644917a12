"""Hexagonal lattices: point -> nearest lattice site by index arithmetic, and site geometry.

Sites sit at ``i * a1 + j * a2`` with ``|a1| = |a2| = pitch`` and ``a2`` at 60 degrees from ``a1``.
The region closest to a site is a regular hexagon of flat-to-flat width ``pitch`` whose flats face
the six nearest sites, so rounding to the nearest site is an exact hexagonal cell assignment.
"""

from __future__ import annotations

import math

import numpy as np


class HexLattice:
    """A hexagonal lattice of given pitch (flat-to-flat, mm) and orientation of ``a1`` (deg)."""

    def __init__(self, pitch: float, angle_deg: float = 0.0):
        self.pitch = float(pitch)
        self.angle_deg = float(angle_deg)
        # Scalar sin/cos from the C library and an explicit 2x2 inverse: no SIMD or BLAS path
        # whose last bits vary with the CPU (geometry.identity).
        t = math.radians(angle_deg)
        a1 = [self.pitch * math.cos(t), self.pitch * math.sin(t)]
        a2 = [self.pitch * math.cos(t + math.pi / 3), self.pitch * math.sin(t + math.pi / 3)]
        self.basis = np.array([[a1[0], a2[0]], [a1[1], a2[1]]])  # columns a1, a2
        det = a1[0] * a2[1] - a2[0] * a1[1]
        self.inverse = np.array([[a2[1], -a2[0]], [-a1[1], a1[0]]]) / det

    @property
    def circumradius(self) -> float:
        return self.pitch / np.sqrt(3.0)

    @property
    def cell_area(self) -> float:
        return np.sqrt(3.0) / 2.0 * self.pitch**2

    def index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (i, j) of the site nearest to each point (cube-coordinate rounding)."""
        q = self.inverse[0, 0] * x + self.inverse[0, 1] * y
        r = self.inverse[1, 0] * x + self.inverse[1, 1] * y
        s = -q - r
        rq, rr, rs = np.rint(q), np.rint(r), np.rint(s)
        dq, dr, ds = np.abs(rq - q), np.abs(rr - r), np.abs(rs - s)
        fix_q = (dq > dr) & (dq > ds)
        fix_r = ~fix_q & (dr > ds)
        rq = np.where(fix_q, -rr - rs, rq)
        rr = np.where(fix_r, -rq - rs, rr)
        return rq.astype(np.int64), rr.astype(np.int64)

    def centre(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (x, y) in mm of sites (i, j)."""
        i = np.asarray(i, dtype=np.float64)
        j = np.asarray(j, dtype=np.float64)
        return (self.basis[0, 0] * i + self.basis[0, 1] * j,
                self.basis[1, 0] * i + self.basis[1, 1] * j)

    def corners(self) -> np.ndarray:
        """(6, 2) corner offsets of a site's hexagon, counter-clockwise."""
        a = [math.radians(self.angle_deg + 30.0 + 60.0 * k) for k in range(6)]
        return self.circumradius * np.array([[math.cos(t), math.sin(t)] for t in a])

    def sites_within(self, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """All site indices whose centre lies within ``radius`` of the origin."""
        n = int(np.ceil(radius / (self.pitch * np.sqrt(3) / 2))) + 1
        i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
        i, j = i.ravel(), j.ravel()
        x, y = self.centre(i, j)
        keep = np.hypot(x, y) <= radius
        return i[keep], j[keep]
