"""Fixed train / validation / test splits of a sim-hit sample: event ranges of every file.

The same ranges are used by the graph cache and by the generators' training, so a "test"
shower is never seen in training by any model.
"""

from __future__ import annotations

import numpy as np

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.simhits import ShowerBatch, concatenate, read_header, read_showers, sample_files

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)


def split_bounds(n: int, fractions=FRACTIONS) -> np.ndarray:
    """(4,) event boundaries of the train, val and test ranges of a file with n showers."""
    return np.round(np.cumsum([0, *fractions]) * n).astype(int)


def file_sizes(files, geom: Geometry) -> list[int]:
    """Showers per file, after checking every file's geometry hash against ``geom``."""
    sizes = []
    for f in files:
        meta, n = read_header(f, geom)
        geom.require_same(meta.get("geometry_hash"), str(f))
        sizes.append(n)
    return sizes


def read_split(spec, geom: Geometry, split: str, fractions=FRACTIONS) -> ShowerBatch:
    """The showers of one split of a sample (file, folder or glob; several joined by commas)."""
    if split not in SPLITS:
        raise FastShowerError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    files = sample_files(spec)
    k = SPLITS.index(split)
    parts = []
    for f, n in zip(files, file_sizes(files, geom), strict=True):
        lo, hi = split_bounds(n, fractions)[k:k + 2]
        if hi > lo:
            parts.append(read_showers(f, int(lo), int(hi), geom))
    if not parts:
        raise FastShowerError(f"the {split} split of {spec} is empty")
    return concatenate(parts)
