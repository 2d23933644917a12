"""The cell-neighbourhood graph, built once per geometry.

In a layer, two cells are neighbours when they touch: a probe point within ``eps`` of a corner
of one lies in the other. Probing goes through the geometry's own point -> cell lookup, so it links
cells across wafer edges, the HD/LD boundary and the silicon/scintillator border alike, and gives
the minimum-distance neighbours at the border, where corners of the two sides do not coincide.
Between layers, each cell links to the cell with the nearest centre in the next and the previous
layer of the same endcap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from fastshower.geometry.segmentation import SILICON

SI_SI, SC_SC, SI_SC, LONGITUDINAL = 0, 1, 2, 3
EDGE_KINDS = {SI_SI: "silicon-silicon", SC_SC: "scintillator-scintillator",
              SI_SC: "silicon-scintillator", LONGITUDINAL: "longitudinal"}

Lookup = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values by sorting (faster here than numpy's hash-based np.unique)."""
    v = np.sort(values)
    keep = np.ones(len(v), dtype=bool)
    keep[1:] = v[1:] != v[:-1]
    return v[keep]


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unique undirected pairs as int64 codes min << 32 | max (ids < 2**31)."""
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    return unique((lo << 32) | hi)


def in_layer_pairs(lookup: Lookup, layer: int, corners: np.ndarray, eps: float = 1.0,
                   n_probes: int = 8) -> np.ndarray:
    """Pair codes (see ``pair_codes``) of touching cells in one layer; corners (n, K, 2) mm."""
    pts = corners.reshape(-1, 2)
    pts = pts[~np.isnan(pts[:, 0])].astype(np.float64)
    # Corners are shared by up to four cells: probe each distinct vertex once (1 um grid).
    q = np.round(pts * 1000.0).astype(np.int64)
    vertex = unique((q[:, 0] << 32) ^ (q[:, 1] & 0xFFFFFFFF))
    pts = np.stack([vertex >> 32, (vertex << 32) >> 32], -1) / 1000.0
    ang = 2 * np.pi * (np.arange(n_probes) + 0.5) / n_probes
    px = (pts[:, :1] + eps * np.cos(ang)[None]).ravel()
    py = (pts[:, 1:] + eps * np.sin(ang)[None]).ravel()
    ids = lookup(np.full(px.shape, layer), px, py).reshape(-1, n_probes)
    ids = np.sort(ids, axis=1)
    distinct = np.ones_like(ids, dtype=bool)
    distinct[:, 1:] = ids[:, 1:] != ids[:, :-1]
    distinct &= ids >= 0
    a, b = np.triu_indices(n_probes, k=1)
    m = distinct[:, a] & distinct[:, b]
    return pair_codes(ids[:, a][m], ids[:, b][m])


def longitudinal_pairs(x: np.ndarray, y: np.ndarray, size: np.ndarray, layer: np.ndarray,
                       next_layer: np.ndarray) -> np.ndarray:
    """Pair codes linking each cell to the nearest-centre cell in the next/previous layer.

    A link is kept when the centres are closer than the sum of the two cells' sizes.
    """
    order = np.argsort(layer, kind="stable")
    bounds = np.searchsorted(layer[order], np.arange(len(next_layer) + 1))
    members = [order[bounds[i]:bounds[i + 1]] for i in range(len(next_layer))]
    xy = np.stack([x, y], -1).astype(np.float64)
    trees = [cKDTree(xy[m]) if len(m) else None for m in members]
    pairs = []
    for a, b in enumerate(next_layer):
        if b < 0 or trees[a] is None or trees[b] is None:
            continue
        for src, dst in ((a, b), (b, a)):
            d, j = trees[dst].query(xy[members[src]])
            tgt = members[dst][j]
            ok = d < size[members[src]] + size[tgt]
            pairs.append(pair_codes(members[src][ok], tgt[ok]))
    return unique(np.concatenate(pairs)) if pairs else np.zeros(0, dtype=np.int64)


def symmetric_edges(codes: np.ndarray, cell_type: np.ndarray, layer: np.ndarray):
    """Symmetric (2, E) int32 edge list, sorted by source, without self-loops; edge kinds.

    ``codes``: unique undirected pair codes from ``pair_codes``.
    """
    lo, hi = (codes >> 32).astype(np.int32), (codes & 0xFFFFFFFF).astype(np.int32)
    keep = lo != hi
    src = np.concatenate([lo[keep], hi[keep]])
    dst = np.concatenate([hi[keep], lo[keep]])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    ts, td = cell_type[src], cell_type[dst]
    kind = np.where(ts != td, SI_SC, np.where(ts == SILICON, SI_SI, SC_SC)).astype(np.int8)
    kind[layer[src] != layer[dst]] = LONGITUDINAL
    return np.stack([src, dst]), kind
