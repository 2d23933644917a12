"""Issue 19: the CaloChallenge 2022 datasets' voxels as a geometry, their HDF5 files as
samples, and generators trained on them. The binnings are written here from the challenge's
published XML facts (r_edges and n_bin_alpha per layer of datasets 1-3)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fastshower.data.splits import read_split
from fastshower.errors import FastShowerError, GeometryError
from fastshower.geometry import import_geometry, load, save
from fastshower.geometry.calochallenge import Binning, unpack
from fastshower.simhits import read_primaries, read_sample
from fastshower.validation.export import export_calochallenge

EMPTY = ((), 1)
DS1_PHOTONS = ([((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
                ((0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
                ((0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300,
                  350, 400), 10),
                ((0, 50, 100, 200, 400, 600), 1)] + [EMPTY] * 8
               + [((0, 100, 200, 400, 1000, 2000), 1)] + [EMPTY] * 11, 22)
DS1_PIONS = ([((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
              ((0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10),
              ((0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400), 10),
              ((0, 50, 100, 200, 400, 600), 1)] + [EMPTY] * 8
             + [((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000), 10),
                ((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000,
                  2000), 10),
                ((0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1)] + [EMPTY] * 9, 211)
DS2 = ([(tuple(round(4.65 * i, 3) for i in range(10)), 16)] * 45, 11)
DS3 = ([(tuple(round(2.325 * i, 3) for i in range(19)), 50)] * 45, 11)


def binning(layers_pid) -> Binning:
    layers, pid = layers_pid
    return Binning([tuple(float(v) for v in r) for r, _ in layers], [a for _, a in layers], pid)


def write_xml(path, layers_pid):
    path.write_text(binning(layers_pid).to_xml())
    return path


@pytest.mark.parametrize("layers_pid, n_voxels", [(DS1_PHOTONS, 368), (DS1_PIONS, 533),
                                                  (DS2, 6480), (DS3, 40500)])
def test_every_challenge_binning_is_a_geometry_whose_cell_ids_are_voxel_indices(
        tmp_path, layers_pid, n_voxels):
    b = binning(layers_pid)
    xml = write_xml(tmp_path / "binning.xml", layers_pid)
    geom = load(xml)  # an XML loads as a geometry directly
    assert geom.builder == "calochallenge" and geom.n_cells == b.n_voxels == n_voxels
    assert len(geom.layers) == len(b.r_edges)
    assert Binning.from_xml(b.to_xml()) == b
    # the challenge's order: layer by layer, angular bin major, radial bin minor
    layer, i_a, i_r = unpack(geom.cells["key"])
    n_r = np.array([max(len(r) - 1, 0) for r in b.r_edges])
    np.testing.assert_array_equal(b.offsets[layer] + i_a * n_r[layer] + i_r,
                                  np.arange(n_voxels))
    # a point at a voxel's (r, alpha) centre, and one just inside its corner, find that voxel
    r_mid = np.array([0.5 * (b.r_edges[la][k] + b.r_edges[la][k + 1])
                      for la, k in zip(layer, i_r, strict=True)])
    n_a = np.asarray(b.n_alpha)[layer]
    for frac_a, r in ((0.5, r_mid), (0.01, np.array([b.r_edges[la][k] for la, k in
                                                      zip(layer, i_r, strict=True)]) + 1e-3)):
        alpha = -np.pi + (i_a + frac_a) * 2 * np.pi / n_a
        ids = geom.lookup(layer, r * np.cos(alpha), r * np.sin(alpha))
        np.testing.assert_array_equal(ids, np.arange(n_voxels))
    outer = np.array([b.r_edges[la][-1] for la in layer])
    assert np.all(geom.lookup(layer, outer + 1.0, 0.0 * outer) == -1)
    # neighbours: the cells sharing an edge in a layer, and the next layer with cells
    in_layer = geom.edge_kind != 3
    src, dst = geom.edges[:, in_layer]
    l2, a2, r2 = (v[dst] for v in (layer, i_a, i_r))
    l1, a1, r1 = (v[src] for v in (layer, i_a, i_r))
    assert np.all(l1 == l2)
    da = (a1 - a2) % n_a[src]
    assert np.all(((a1 == a2) & (np.abs(r1 - r2) == 1))
                  | ((r1 == r2) & ((da == 1) | (da == n_a[src] - 1))))
    expected = sum((len(r) - 2) * a + (len(r) - 1) * (a if a > 2 else a - 1)
                   for r, a in zip(b.r_edges, b.n_alpha, strict=True) if r)
    assert in_layer.sum() == 2 * expected
    with_cells = sorted(set(layer.tolist()))
    longitudinal = geom.edges[:, ~in_layer]
    hops = {(int(layer[s]), int(layer[d])) for s, d in longitudinal.T}
    assert hops == {(a, c) for a, c in zip(with_cells, with_cells[1:], strict=False)} | {
        (c, a) for a, c in zip(with_cells, with_cells[1:], strict=False)}
    again = save(geom, tmp_path / "g.h5")
    assert load(again).hash == geom.hash == import_geometry(xml).hash


@pytest.mark.parametrize("layers_pid", [DS1_PHOTONS, DS1_PIONS, DS3])
def test_files_of_every_official_shape_go_back_unchanged(tmp_path, layers_pid):
    xml = write_xml(tmp_path / "binning.xml", layers_pid)
    geom = load(xml)
    e_inc, showers = synthetic_file(tmp_path / "in.hdf5", geom, 12)
    batch, _ = read_sample(tmp_path / "in.hdf5", geom)
    assert np.all(batch.primaries.pdg == layers_pid[1])
    export_calochallenge(batch, geom, tmp_path / "out.hdf5")
    with h5py.File(tmp_path / "out.hdf5") as f:
        np.testing.assert_array_equal(f["showers"][...], showers)
        np.testing.assert_array_equal(f["incident_energies"][...], e_inc.reshape(-1, 1))
    assert (tmp_path / "out.xml").read_text() == xml.read_text()


def test_bad_binning_xml_gives_one_clear_line(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Bin pid='11'><Layer id='0' r_edges='0,5,3' n_bin_alpha='4'/></Bin>"
                   "</Bins>")
    with pytest.raises(GeometryError, match="r_edges must rise from 0"):
        load(bad)
    bad.write_text("not xml")
    with pytest.raises(GeometryError, match="not a CaloChallenge binning XML"):
        load(bad)


def synthetic_file(path, geom, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n showers in the official layout: (n, 1) incident energies, (n, voxels) float64 MeV."""
    rng = np.random.default_rng(seed)
    e_inc = 10 ** rng.uniform(3, 5, n)
    shift = rng.normal(0.0, 2.0, (n, 2, 1))  # mm: showers not all on the axis
    r = np.hypot(geom.cells["x"] - shift[:, 0], geom.cells["y"] - shift[:, 1])
    depth = geom.cells["layer"].astype(np.float64) - rng.normal(12.0, 2.0, (n, 1))
    mean = np.exp(-r / 6.0 - (depth / 8.0) ** 2)
    counts = rng.poisson(mean * (e_inc[:, None] / 1e3))
    showers = counts * (e_inc / np.maximum(counts.sum(1), 1))[:, None]
    with h5py.File(path, "w") as f:
        f["incident_energies"] = e_inc.reshape(-1, 1)
        f["showers"] = showers
    return e_inc, showers


def test_challenge_files_are_samples_read_in_chunks_and_written_back_unchanged(tmp_path,
                                                                                monkeypatch):
    import fastshower.simhits as simhits

    xml = write_xml(tmp_path / "ds2.xml", DS2)
    geom = load(xml)
    e_inc, showers = synthetic_file(tmp_path / "ds2.h5", geom, 50)
    monkeypatch.setattr(simhits, "CHUNK_ROWS", 7)  # several chunks per split
    batch, meta = read_sample(f"calochallenge:{tmp_path / 'ds2.h5'}", geom)
    assert meta["geometry_hash"] == geom.hash and len(batch) == 50
    np.testing.assert_array_equal(batch.primaries.energy_mev, e_inc)
    assert np.all(batch.primaries.pdg == 11) and np.all(batch.primaries.direction[:, 2] == 1)
    event, ids, energy = batch.flat()
    dense = np.zeros_like(showers)
    dense[event, ids] = energy
    np.testing.assert_array_equal(dense, showers)
    train = read_split(tmp_path / "ds2.h5", geom, "train")
    assert len(train) == 40
    np.testing.assert_array_equal(train.primaries.energy_mev, e_inc[:40])
    np.testing.assert_array_equal(read_primaries(tmp_path / "ds2.h5", geom).energy_mev, e_inc)
    info = export_calochallenge(batch, geom, tmp_path / "out.h5")
    assert info["scale"] == 1.0
    with h5py.File(tmp_path / "out.h5") as f:
        np.testing.assert_array_equal(f["showers"][...], showers)
        np.testing.assert_array_equal(f["incident_energies"][...], e_inc.reshape(-1, 1))
    assert (tmp_path / "out.xml").read_text() == xml.read_text()
    # the wrong geometry, or none: one clear line
    with pytest.raises(FastShowerError, match="6480 voxels per shower, its geometry 368"):
        read_sample(tmp_path / "ds2.h5", load(write_xml(tmp_path / "ds1.xml", DS1_PHOTONS)))
    with pytest.raises(FastShowerError, match="give the geometry of its voxels"):
        read_sample(tmp_path / "ds2.h5")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(FastShowerError, match="not a readable CaloChallenge HDF5 file"):
        read_sample(tmp_path / "broken.h5", geom)


def test_walk_through_calochallenge_dataset_2(tmp_path):
    """docs/your-data.md, part 2, as a user runs it, on a dataset-2-shaped sample the project
    makes: Geant4 electrons in the W/Si layers of the dataset-2 geometry, read out in its
    voxels and exported in the challenge's scale. Train on the HDF5 file with the binning XML
    as the geometry, generate on its incident energies, write the same format and voxel order
    back (the challenge's own check: (N, 1) energies, (N, 6480) showers, float64), compare in
    the validation report, export to ONNX."""
    import subprocess
    import sys

    def fastshower(*args):
        proc = subprocess.run([sys.executable, "-m", "fastshower", *map(str, args)],
                              cwd=tmp_path, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        return proc.stdout

    xml = write_xml(tmp_path / "binning_dataset_2.xml", DS2)
    out = fastshower("geometry", "import", xml.name, "--out", "ds2.h5")
    assert "6480 cells" in out
    fastshower("simulate", "--geometry", "ds2.h5", "--particle", "e-", "--energy", "2:20",
               "--theta", "0", "--phi", "0", "--n", "100", "--jobs", "2", "--seed", "3",
               "--out", "g4")
    fastshower("export", "--input", "g4", "--geometry", "ds2.h5", "--scale", "auto", "--out",
               "dataset_2.hdf5")
    with h5py.File(tmp_path / "dataset_2.hdf5") as f:
        e_inc, showers = f["incident_energies"][...], f["showers"][...]
    assert showers.sum(1).mean() == pytest.approx(e_inc.mean())  # the challenge's scale
    assert (showers.sum(1) / e_inc[:, 0]).std() < 0.1
    layer_profile = showers.reshape(100, 45, -1).sum((0, 2))
    assert 5 < layer_profile.argmax() < 25  # 2-20 GeV electrons peak at 3-9 X0 (0.4 X0/layer)

    fastshower("train", "--model", "layerhits", "--data", "calochallenge:dataset_2.hdf5",
               "--geometry", xml.name, "--out", "run", "--set", "max_steps=12", "--set",
               "val_every=6", "--set", "val_showers=10", "--set", "layerhits.flow_hidden=16",
               "--set", "layerhits.flow_transforms=1", "--set", "layerhits.hidden=8")
    fastshower("generate", "--run", "run", "--geometry", "ds2.h5", "--primaries-from",
               "calochallenge:dataset_2.hdf5", "--allow-extrapolation",  # the test split's
               "--out", "gen/showers.root")                              # energies: 3 % out
    fastshower("export", "--input", "gen", "--geometry", "ds2.h5", "--out", "gen.hdf5")
    with h5py.File(tmp_path / "gen.hdf5") as f:  # what the challenge's check_file asserts
        assert set(f) == {"incident_energies", "showers"}
        assert f["incident_energies"].shape == (100, 1) and f["showers"].shape == (100, 6480)
        assert f["showers"].dtype == f["incident_energies"].dtype == np.float64
        np.testing.assert_array_equal(f["incident_energies"][...], e_inc)
        gen = f["showers"][...]
    assert np.isfinite(gen).all() and gen.min() >= 0 and gen.sum(1).min() > 0
    assert (tmp_path / "gen.xml").read_text() == xml.read_text()
    out = fastshower("validate", "--reference", "calochallenge:dataset_2.hdf5", "--generated",
                     "gen", "--geometry", xml.name, "--out", "report")
    assert "classifier AUC" in out and (tmp_path / "report" / "report.html").is_file()
    fastshower("export-model", "--run", "run", "--geometry", "ds2.h5", "--out", "onnx")
    assert (tmp_path / "onnx" / "model.onnx").is_file()
