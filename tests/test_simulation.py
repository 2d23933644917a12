"""Geant4 simulation end to end, offline mode (CI=true, no stdin): files, seeds, resume, physics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import awkward as ak
import h5py
import numpy as np
import pytest

from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.simhits import read_metadata, read_sample, read_showers
from fastshower.simulation.gun import GunConfig
from fastshower.simulation.jobs import simulate
from fastshower.validation.observables import (
    centroid_depth,
    depth_x0,
    layer_energies,
    start_layer,
    visible_energy,
)


@pytest.fixture(scope="module")
def geometry(tmp_path_factory):
    geom = build_geometry("hgcal")
    return geom, save(geom, tmp_path_factory.mktemp("geo") / "hgcal.h5")


def run(geometry_path, out, particle="e-", energy=5.0, n=6, jobs=2, seed=11, eta=2.0, **kw):
    gun = GunConfig(particle=particle, energy=[energy], eta=(eta, eta))
    return simulate(geometry_path, gun, n, out, jobs=jobs, seed=seed, show_progress=False, **kw)


def test_production_files_are_complete_seeded_and_resumable(geometry, tmp_path):
    geom, path = geometry
    files = run(path, tmp_path / "a")
    assert [f.name for f in files] == ["job_000.root", "job_001.root"]
    assert not list((tmp_path / "a").glob("*.tmp"))
    meta = read_metadata(files[0])
    assert meta["geometry_hash"] == geom.hash
    assert meta["physics_mode"] == "offline" and meta["generator"] == "geant4"
    assert meta["geant4_version"].startswith("11")
    assert read_metadata(files[0])["seed"] != read_metadata(files[1])["seed"]

    a = read_showers(files[0])
    assert len(a) == 3
    assert np.allclose(a.primaries.energy_mev, 5000.0)
    ids = ak.to_numpy(ak.flatten(a.cell_id))
    assert ids.min() >= 0 and ids.max() < geom.n_cells
    assert np.all(ak.to_numpy(ak.flatten(a.cell_time)) > 10.0)  # light needs 10.7 ns to z=3.2 m

    again = run(path, tmp_path / "b")  # same seed, other folder: identical showers
    b = read_showers(again[0])
    assert ak.all(a.cell_id == b.cell_id) and ak.all(a.cell_energy == b.cell_energy)

    shared = run(path, tmp_path / "c", job_range=(1, 2))  # the part another machine runs
    assert [f.name for f in shared] == ["job_001.root"]
    assert not (tmp_path / "c" / "job_000.root").exists()
    c = read_showers(shared[0])
    assert ak.all(c.cell_energy == read_showers(files[1]).cell_energy)

    stamp = [f.stat().st_mtime_ns for f in files]
    files[1].unlink()  # as if killed before job 1 finished
    manifest = tmp_path / "a" / "production.json"  # as written before the gun had --theta/--aim
    old = json.loads(manifest.read_text())
    del old["gun"]["theta_deg"], old["gun"]["aim_mm"]
    manifest.write_text(json.dumps(old))
    run(path, tmp_path / "a")
    assert files[0].stat().st_mtime_ns == stamp[0]  # complete file skipped
    assert files[1].is_file()


def test_bad_input_gives_one_clear_error(geometry, tmp_path):
    _, path = geometry
    run(path, tmp_path / "out", n=2, jobs=1)
    with pytest.raises(FastShowerError, match="exists"):
        run(path, tmp_path / "out", n=4, jobs=1)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes())
    with h5py.File(broken, "r+") as f:
        f["cells/x"][0] += 1.0
    with pytest.raises(FastShowerError, match="hash"):
        run(broken, tmp_path / "new", n=2, jobs=1)

    env = {**os.environ, "CI": "true"}
    for args, message in ((["--particle", "kaon"], "unknown particle"),
                          (["--energy", "0"], "positive"),
                          (["--energy", "50:10"], "reversed"),
                          (["--geometry", str(broken)], "hash"),
                          (["--jobs", "2", "--job-range", "1:3"], "not a range"),
                          (["--job-range", "x"], "FIRST:END")):
        proc = subprocess.run([sys.executable, "-m", "fastshower", "simulate", *args, "--out",
                               str(tmp_path / "cli")], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("builder", ["hgcal", "grid"])
def test_both_scoring_options_put_a_muon_in_the_same_cells_at_the_same_time(geometry, builder,
                                                                           tmp_path):
    """Cells as Geant4 volumes (C++, the default: placed prisms on the HGCAL-like geometry,
    replicas on the grid) and sensor steps looked up in Python (exact first-deposit time) on
    the same seeds: a 20 GeV muon's track crosses the same cells in the first 20 layers
    (deeper, the two runs' random sequences have drifted apart); 'cells' times are the
    straight time of flight, within 10 ps of the first deposit at beta = 1."""
    geom, path = geometry
    eta = 2.0
    if builder == "grid":  # the CLIC-like grid sits at eta 4-5
        geom, path, eta = build_geometry("grid"), tmp_path / "grid.h5", 4.5
        save(geom, path)
    track, times = {}, {}
    for scoring in ("cells", "steps"):
        run(path, tmp_path / scoring, particle="mu-", energy=20.0, n=3, jobs=1, eta=eta,
            scoring=scoring)
        batch, meta = read_sample(tmp_path / scoring)
        assert meta["scoring"] == scoring
        for i in range(3):
            ids = ak.to_numpy(batch.cell_id[i])
            e = ak.to_numpy(batch.cell_energy[i])
            t = ak.to_numpy(batch.cell_time[i])
            for layer in range(20):  # the track's cell: the most energetic of the layer
                on = np.flatnonzero(geom.cells["layer"][ids] == layer)
                if len(on):
                    best = on[np.argmax(e[on])]
                    track[scoring, i, layer] = ids[best]
                    times[scoring, i, layer] = t[best]
    keys = [(i, layer) for i in range(3) for layer in range(20)]
    same = [k for k in keys if track.get(("cells", *k), -1) == track.get(("steps", *k), -2)]
    assert len(same) >= 0.8 * len(keys)
    dt = [times["cells", *k] - times["steps", *k] for k in same]
    assert np.median(np.abs(dt)) < 0.01


def test_em_shower_physics_small_statistics(geometry, tmp_path):
    """Sampling fraction flat, shower maximum deeper with energy, photons start deeper."""
    geom, path = geometry
    depth = depth_x0(geom)
    result = {}
    for particle, energy, n in (("e-", 5.0, 24), ("gamma", 5.0, 24), ("e-", 40.0, 8)):
        run(path, tmp_path / f"{particle}{energy}", particle=particle, energy=energy, n=n,
            jobs=2)
        batch, _ = read_sample(tmp_path / f"{particle}{energy}")
        profile = layer_energies(batch, geom)
        result[particle, energy] = {
            "fraction": visible_energy(batch) / (energy * 1000.0),
            "centroid": centroid_depth(profile, depth),
            "start": start_layer(profile),
        }
    e5, g5, e40 = result["e-", 5.0], result["gamma", 5.0], result["e-", 40.0]
    sf5, sf40 = e5["fraction"].mean(), e40["fraction"].mean()
    assert 0.004 < sf5 < 0.03  # thin silicon in lead/copper: about one per cent
    assert sf40 == pytest.approx(sf5, rel=0.06)
    shift = e40["centroid"].mean() - e5["centroid"].mean()
    assert 0.8 * np.log(8) < shift < 1.4 * np.log(8) + 0.5  # about 1 X0 per unit of ln E
    assert g5["start"].mean() > e5["start"].mean()
    assert g5["centroid"].mean() > e5["centroid"].mean()


def test_interrupted_production_leaves_no_file_that_looks_complete(geometry, tmp_path):
    import signal
    import time

    _, path = geometry
    out = tmp_path / "killed"
    # Ctrl-C as in a terminal: pytest-xdist workers ignore SIGINT and children inherit that
    proc = subprocess.Popen([sys.executable, "-m", "fastshower", "simulate", "--geometry",
                             str(path), "--energy", "50", "--n", "400", "--jobs", "1", "--out",
                             str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "CI": "true"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "job_000.root.tmp").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "job_000.root.tmp").exists()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode in (130, -signal.SIGINT)  # interrupted, not crashed
        assert not (out / "job_000.root").exists()
    finally:
        proc.kill()  # never leave a production running behind a failed test


def test_synthetic_brem_tables_meet_geant4_model_at_1_gev(geometry):
    """Below 1 GeV Geant4 reads our Seltzer-Berger-format tables, above it uses its own model."""
    import multiprocessing as mp

    from fastshower.simulation.runner import em_dedx

    _, path = geometry
    materials = ["G4_Pb", "G4_W", "G4_Cu", "G4_Si"]
    with mp.get_context("spawn").Pool(1) as pool:
        dedx = pool.apply(em_dedx, (str(path), "e-", "eBrem", materials, [999.0, 1001.0]))
    from fastshower.geometry.materials import material

    for m in materials:
        below, above = dedx[m]
        assert above / below == pytest.approx(1.002, abs=0.005)  # dE/dx ~ E: +0.2 % over 2 MeV
        assert below == pytest.approx(999.0 / material(m).x0_mm, rel=0.03)  # ~ E / X0
