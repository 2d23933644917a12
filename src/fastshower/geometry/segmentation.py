"""Readout segmentations: (layer, x, y) -> cell key by index arithmetic, no search per point.

A cell key is a 64-bit integer packing (layer, cell type, two indices). The geometry keeps its
cells sorted by key, so key -> cell id is one ``searchsorted`` over the whole array of points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

SILICON, SCINTILLATOR = 0, 1
CELL_TYPES = {SILICON: "silicon", SCINTILLATOR: "scintillator"}

_F2_BITS, _F1_BITS = 24, 30


def pack_key(layer, cell_type, f1, f2) -> np.ndarray:
    """Pack (layer, type, f1, f2) into int64 keys; f1 < 2**30 and f2 < 2**24, all >= 0."""
    layer = np.asarray(layer, dtype=np.int64)
    return ((layer << (_F1_BITS + _F2_BITS + 2))
            | (np.asarray(cell_type, dtype=np.int64) << (_F1_BITS + _F2_BITS))
            | (np.asarray(f1, dtype=np.int64) << _F2_BITS)
            | np.asarray(f2, dtype=np.int64))


def pack_pair(i, j, bits: int) -> np.ndarray:
    """Two signed indices in one non-negative field of ``2 * bits`` bits."""
    off = 1 << (bits - 1)
    return ((np.asarray(i, dtype=np.int64) + off) << bits) | (np.asarray(j, dtype=np.int64) + off)


class Segmentation(ABC):
    """Maps points in a layer to cell keys; -1 for points in no cell."""

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[Segmentation]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Segmentation.registry[cls.kind] = cls

    @abstractmethod
    def keys(self, layer: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cell keys (int64) of points (x, y) in mm on the given layers; -1 outside."""

    @abstractmethod
    def to_dict(self) -> dict: ...

    def attach(self, cells: dict[str, np.ndarray]) -> None:
        """Called with the geometry's cells once it exists: a segmentation that looks points up
        among the cells themselves (a table's) indexes them here; others need nothing."""
        return None

    def in_layer_pairs(self, keys: np.ndarray) -> np.ndarray | None:
        """Pair codes (neighbours.pair_codes of cell ids) of touching cells in the layers, given
        the geometry's sorted cell keys, where index arithmetic knows them; None: probe the
        cells' corners through the lookup (neighbours.in_layer_pairs)."""
        return None

    @classmethod
    def from_dict(cls, d: dict) -> Segmentation:
        d = dict(d)
        return cls.registry[d.pop("kind")].from_params(d)

    @classmethod
    @abstractmethod
    def from_params(cls, d: dict) -> Segmentation: ...
