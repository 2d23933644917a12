"""A geometry's identity: the same hex digest on every CPU, numpy build and OS.

The identity is a SHA-256 over the canonical definition (format, identity scheme, builder,
validated config) and the content quantised to stated precisions: lengths to 1 um, other floats
to 20 mantissa bits (~1e-6 relative), integers (cell keys, layers, types, edges) exactly. Raw
float bytes are never hashed: their last bits depend on the SIMD path numpy picks for sin, cos,
sinh, log (docs/geometry.md, "Identity").
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from fastshower.errors import GeometryError

SCHEME = 2  # identity scheme; 1 was a hash of raw float bytes (CPU-dependent)
LENGTH_QUANTUM_MM = 1e-3
MANTISSA_BITS = 20
NAN_CODE = np.iinfo(np.int64).min
LENGTH_COLUMNS = ("x", "y", "z", "thickness", "corners")
RELATIVE_COLUMNS = ("area",)
EXACT_COLUMNS = ("key", "layer", "type", "n_corners")


def length_quanta(values_mm) -> np.ndarray:
    """Lengths in mm as int64 numbers of 1 um quanta (NaN -> NAN_CODE)."""
    v = np.asarray(values_mm, dtype=np.float64)
    q = np.rint(np.where(np.isnan(v), 0.0, v) / LENGTH_QUANTUM_MM).astype(np.int64)
    return np.where(np.isnan(v), NAN_CODE, q)


def relative_quanta(values) -> np.ndarray:
    """Floats as int64 (mantissa rounded to MANTISSA_BITS bits, exponent) pairs, shape (..., 2)."""
    m, e = np.frexp(np.asarray(values, dtype=np.float64))
    return np.stack([np.rint(np.ldexp(m, MANTISSA_BITS)).astype(np.int64),
                     e.astype(np.int64)], -1)


def canonical_float(x: float) -> float:
    """A float rounded to MANTISSA_BITS bits: its JSON text no longer carries last-bit noise."""
    if not math.isfinite(x) or x == 0.0:
        return x
    m, e = math.frexp(x)
    return math.ldexp(round(math.ldexp(m, MANTISSA_BITS)), e - MANTISSA_BITS)


def canonical(obj):
    """A JSON-able structure with every float replaced by its canonical value."""
    if isinstance(obj, float):
        return canonical_float(obj)
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


def identity(metadata: dict, cells: dict[str, np.ndarray], edges: np.ndarray,
             edge_kind: np.ndarray, format_name: str) -> str:
    """SHA-256 hex digest of a geometry's canonical definition and quantised content."""
    head = {"format": format_name, "identity_scheme": SCHEME, **canonical(metadata)}
    h = hashlib.sha256(json.dumps(head, sort_keys=True, allow_nan=True).encode())
    for name in EXACT_COLUMNS + LENGTH_COLUMNS + RELATIVE_COLUMNS:
        v = cells[name]
        q = (np.asarray(v, dtype=np.int64) if name in EXACT_COLUMNS
             else length_quanta(v) if name in LENGTH_COLUMNS else relative_quanta(v))
        h.update(f"{name}:{q.shape}".encode())
        h.update(np.ascontiguousarray(q, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(edges, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(edge_kind, dtype="<i8").tobytes())
    return h.hexdigest()


def legacy_hash(metadata: dict, cells: dict[str, np.ndarray], edges: np.ndarray,
                edge_kind: np.ndarray, columns: tuple[str, ...]) -> str:
    """The scheme-1 hash (raw float bytes) older files record; valid only on the CPU that
    wrote them. Kept to read those files on that machine (the compatibility rule)."""
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in columns:
        h.update(name.encode())
        h.update(np.ascontiguousarray(cells[name]).tobytes())
    h.update(np.ascontiguousarray(edges).tobytes())
    h.update(np.ascontiguousarray(edge_kind).tobytes())
    return h.hexdigest()


def require_same(recorded: str | None, geom, what: str) -> None:
    """Refuse ``what`` (a file or model made with a recorded identity) unless it was made with
    ``geom``. Identities of scheme 1 are accepted where they equal this machine's scheme-1
    hash of the geometry (a file written here before the change)."""
    recorded = str(recorded or "")
    if recorded in (geom.hash, geom.legacy_hash) and recorded:
        return
    raise GeometryError(f"{what} was made with geometry {recorded[:12] or '(none recorded)'}, "
                        f"not {geom.short_hash}: use the geometry it was made with "
                        "(--geometry), or re-make it with this one")
