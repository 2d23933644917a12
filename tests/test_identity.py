"""A geometry's identity, cell ids and edges do not depend on the SIMD path numpy takes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

from fastshower.errors import GeometryError
from fastshower.geometry import build_geometry, identity

PROBE = """
import hashlib, json, sys, tempfile
from pathlib import Path
from fastshower.geometry import build_geometry, import_geometry
from fastshower.geometry.calochallenge import Binning, CaloChallengeConfig
from fastshower.geometry.table import cell_table, write_table
ds3 = Binning([tuple(round(2.325 * i, 3) for i in range(19))] * 45, [50] * 45)
geoms = {b: build_geometry(b) for b in ("hgcal", "grid")}
geoms["calochallenge ds3"] = build_geometry("calochallenge",
                                           CaloChallengeConfig.of(ds3).model_dump())
with tempfile.TemporaryDirectory() as tmp:
    geoms["table"] = import_geometry(write_table(cell_table(geoms["hgcal"]), Path(tmp) / "c.csv"),
                                     {"sensor_thickness": 0.3})
out = {}
for name, g in geoms.items():
    out[name] = {"identity": g.hash,
                 "keys": hashlib.sha256(g.cells["key"].tobytes()).hexdigest(),
                 "edges": hashlib.sha256(g.edges.tobytes()).hexdigest(),
                 "n_cells": g.n_cells, "n_edges": int(g.edges.shape[1])}
print(json.dumps(out))
"""


def _settings() -> dict[str, str]:
    """NPY_DISABLE_CPU_FEATURES values: none, AVX-512 off, every dispatch target off."""
    have = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    wide = [f for f in have if "AVX512" in f or f == "X86_V4"]
    out = {"none": ""}
    if wide:
        out["avx512 off"] = " ".join(wide)
    if len(have) > len(wide):
        out["all dispatch targets off"] = " ".join(have)
    return out


def test_identity_ids_and_edges_are_the_same_under_every_simd_setting():
    results = {}
    for name, disabled in _settings().items():
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled}
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) >= 2, "this CPU offers no SIMD setting to compare"
    first = next(iter(results.values()))
    for name, got in results.items():
        assert got == first, f"SIMD setting {name!r} changes the geometry"
    assert first["hgcal"]["n_cells"] == 25_932 and first["grid"]["n_cells"] == 72_285
    assert first["calochallenge ds3"]["n_cells"] == 40_500
    assert first["table"]["edges"] == first["hgcal"]["edges"]


def test_quantisation_absorbs_last_bit_noise_but_not_real_changes():
    x = np.array([1234.5678, 0.0301, 7e-4], dtype=np.float64)
    noisy = np.nextafter(x, np.inf)
    assert np.array_equal(identity.length_quanta(x), identity.length_quanta(noisy))
    assert np.array_equal(identity.relative_quanta(x), identity.relative_quanta(noisy))
    assert not np.array_equal(identity.length_quanta(x), identity.length_quanta(x + 2e-3))
    assert identity.canonical({"r": [1.0 / 3.0]}) == identity.canonical(
        {"r": [float(np.nextafter(1.0 / 3.0, 1.0))]})
    assert identity.length_quanta([np.nan])[0] == identity.NAN_CODE


def test_files_recording_another_geometry_are_refused_with_one_line():
    hgcal = build_geometry("hgcal", neighbours=False)
    grid = build_geometry("grid", neighbours=False)
    hgcal.require_same(hgcal.hash, "model.pt")
    hgcal.require_same(hgcal.legacy_hash, "an old sample")  # written here before scheme 2
    with pytest.raises(GeometryError, match=f"made with geometry {grid.short_hash}, not "
                                            f"{hgcal.short_hash}"):
        hgcal.require_same(grid.hash, "model.pt")
    with pytest.raises(GeometryError, match="none recorded"):
        hgcal.require_same(None, "model.pt")
