"""Issue 19: a detector of your own. A geometry from a cell table (CSV, Parquet, HDF5, ROOT)
has the cells and neighbours of the geometry the table came from."""

from __future__ import annotations

import numpy as np
import pytest

from fastshower.errors import GeometryError
from fastshower.geometry import build_geometry, import_geometry, load, save
from fastshower.geometry.table import cell_table, read_table, write_table


@pytest.fixture(scope="module")
def hgcal():
    return build_geometry("hgcal")


def materials(geom) -> dict:
    return {"layers": [{"absorbers": [list(s) for s in lay.absorbers],
                        "sensor_thickness": lay.sensor_gap} for lay in geom.layers]}


def test_the_hgcal_geometry_as_a_table_imports_with_the_same_cells_and_neighbours(
        hgcal, tmp_path):
    path = write_table(cell_table(hgcal), tmp_path / "cells.csv")
    geom = import_geometry(path, materials(hgcal))
    assert geom.builder == "table" and geom.n_cells == hgcal.n_cells
    for name in ("key", "layer", "x", "y", "z", "type", "thickness", "corners", "n_corners"):
        np.testing.assert_array_equal(geom.cells[name], hgcal.cells[name], err_msg=name)
    np.testing.assert_allclose(geom.cells["area"], hgcal.cells["area"], rtol=1e-3)
    np.testing.assert_array_equal(geom.edges, hgcal.edges)
    np.testing.assert_array_equal(geom.edge_kind, hgcal.edge_kind)
    for mine, theirs in zip(geom.layers, hgcal.layers, strict=True):
        assert mine.absorbers == theirs.absorbers
        assert mine.z == pytest.approx(theirs.z, abs=1e-3)
        assert mine.depth_x0 == pytest.approx(theirs.depth_x0, rel=1e-6)
    # the lookup: the same cell for points all over the layers (the table's corners are
    # float32: a point within ~1e-4 mm of an edge may fall on the other side)
    rng = np.random.default_rng(1)
    layer = rng.integers(0, len(hgcal.layers), 50_000)
    x = rng.uniform(-180, 180, 50_000) + hgcal.cells["x"].mean()
    y = rng.uniform(-180, 180, 50_000) + hgcal.cells["y"].mean()
    ids = hgcal.lookup(layer, x, y)
    assert (ids >= 0).mean() > 0.2 and (geom.lookup(layer, x, y) != ids).sum() <= 2
    again = load(save(geom, tmp_path / "imported.h5"))
    assert again.hash == geom.hash
    np.testing.assert_array_equal(again.lookup(layer, x, y), geom.lookup(layer, x, y))


@pytest.mark.parametrize("suffix", [".parquet", ".h5", ".root"])
def test_every_table_format_reads_back_the_same_columns(hgcal, tmp_path, suffix):
    cols = cell_table(hgcal, type_names=suffix != ".root")
    back = read_table(write_table(cols, tmp_path / f"cells{suffix}"))
    assert set(back) == set(cols)
    for name, values in cols.items():
        np.testing.assert_array_equal(back[name], values, err_msg=name)


def test_cells_given_by_shape_and_size(tmp_path):
    """Squares and hexagons around their centres, ids of a 64-bit detid space."""
    i, j = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    n = i.size
    cols = {"id": (np.uint64(1) << np.uint64(40)) + np.arange(2 * n, dtype=np.uint64),
            "layer": np.repeat([7, 9], n), "x": np.tile(10.0 * i.ravel(), 2),
            "y": np.tile(10.0 * j.ravel(), 2), "z": np.repeat([1000.0, 1010.0], n),
            "type": np.array(["silicon"] * n + ["scintillator"] * n),
            "shape": np.array(["square"] * 2 * n), "size": np.full(2 * n, 10.0)}
    write_table(cols, tmp_path / "squares.csv")
    geom = import_geometry(tmp_path / "squares.csv", {"absorbers": [["G4_Pb", 5.0]],
                                                      "sensor_thickness": 0.3})
    assert [lay.section for lay in geom.layers] == ["layer 7", "layer 9"]
    assert geom.layers[1].depth_x0 == pytest.approx(2 * 5.0 / 5.612, rel=0.02)
    np.testing.assert_allclose(geom.cells["area"], 100.0, rtol=1e-5)
    assert np.all(geom.lookup(np.zeros(n), geom.cells["x"][:n] + 4.9,
                              geom.cells["y"][:n] - 4.9) == np.arange(n))
    assert geom.lookup([0], [-5.1], [0.0])[0] == -1
    in_layer = np.bincount(geom.edges[0][geom.edge_kind != 3], minlength=geom.n_cells)
    assert in_layer.max() == 8 and in_layer.min() == 3  # touching squares, corners included
    hexagons = {**cols, "shape": np.array(["hexagon"] * 2 * n)}
    write_table(hexagons, tmp_path / "hexagons.csv")
    geom = import_geometry(tmp_path / "hexagons.csv", {"sensor_thickness": 0.3})
    np.testing.assert_allclose(geom.cells["area"], 1.5 * np.sqrt(3) * 100, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("z"), "lacks the column.s. z"),
    (lambda c: c.pop("thickness"), "thickness .or sensor_thickness"),
    (lambda c: c.update(type=np.array(["silicon", "lead"] * (len(c["id"]) // 2))),
     "unknown cell type.s. lead"),
    (lambda c: c.update(id=np.zeros(len(c["id"]), np.int64)), "cell ids appear twice"),
    (lambda c: c.update(cx0=np.full(len(c["id"]), np.nan)), "cells have fewer than 3 corners"),
])
def test_bad_tables_give_one_clear_line(tmp_path, change, message):
    geom = build_geometry("grid", {"sections": [{
        "name": "ECAL", "n_layers": 2, "nx": 4, "ny": 4, "cell_size": 5.0,
        "absorbers": [["G4_W", 3.5]], "sensor_thickness": 0.5}]})
    cols = cell_table(geom)
    change(cols)
    write_table(cols, tmp_path / "bad.csv")
    with pytest.raises(GeometryError, match=message):
        import_geometry(tmp_path / "bad.csv")


def fastshower(*args, cwd=None):
    """The command line, as a user runs it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fastshower", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def external_ntuple(path, batch, geom, unknown_ids):
    """The project's Geant4 showers as an experiment's ntuple would hold them: tree "events",
    detids, hit energies in GeV, each cell's energy split over two hits, primaries as
    energy (GeV), PDG id, eta and phi; three hits of event 0 on unknown detids."""
    import awkward as ak
    import uproot

    event, ids, energy = batch.flat()
    time = ak.to_numpy(ak.flatten(batch.cell_time)).astype(np.float64)
    detid = np.repeat(geom.cells["key"][ids], 2)
    e = np.repeat(energy, 2) * np.tile([0.25, 0.75], len(energy)) / 1e3
    t = np.repeat(time, 2) + np.tile([0.0, 0.5], len(time))
    counts = 2 * np.bincount(event, minlength=len(batch))
    detid = np.concatenate([unknown_ids, detid])
    e = np.concatenate([np.full(3, 0.002), e])
    t = np.concatenate([np.zeros(3), t])
    counts[0] += 3
    eta, phi = batch.primaries.eta_phi()
    with uproot.recreate(path) as f:
        f.mktree("events", {"simhit_detid": "var * uint64", "simhit_e": "var * float64",
                            "simhit_t": "var * float64", "gen_e": "float64",
                            "gen_pdg": "int32", "gen_eta": "float64", "gen_phi": "float64"})
        f["events"].extend({"simhit_detid": ak.unflatten(detid.astype(np.uint64), counts),
                            "simhit_e": ak.unflatten(e, counts),
                            "simhit_t": ak.unflatten(t, counts),
                            "gen_e": batch.primaries.energy_mev / 1e3,
                            "gen_pdg": batch.primaries.pdg, "gen_eta": eta, "gen_phi": phi})


def test_walk_through_my_cell_table_and_my_geant4_ntuples(tmp_path):
    """docs/your-data.md, part 1, as a user runs it: cell table -> geometry, ntuple -> sim-hit
    file (unknown detids reported), training, generation, the validation report, ONNX."""
    import yaml

    from fastshower.simhits import read_sample
    from fastshower.simulation.gun import GunConfig
    from fastshower.simulation.jobs import simulate

    hgcal = build_geometry("hgcal")
    gpath = save(hgcal, tmp_path / "hgcal.h5")
    simulate(gpath, GunConfig(particle="gamma", energy=[5.0, 20.0], spectrum="uniform"), 60,
             tmp_path / "g4", jobs=2, seed=11, show_progress=False)
    batch, _ = read_sample(tmp_path / "g4")
    write_table(cell_table(hgcal), tmp_path / "cells.csv")
    (tmp_path / "layers.yaml").write_text(yaml.safe_dump(materials(hgcal)))
    unknown = np.array([7, 8, 9]) + hgcal.cells["key"].max()
    external_ntuple(tmp_path / "ntuple.root", batch, hgcal, unknown)
    (tmp_path / "branches.yaml").write_text(yaml.safe_dump({
        "tree": "events", "detid": "simhit_detid", "energy": "simhit_e", "time": "simhit_t",
        "energy_unit": "GeV", "primary_energy": "gen_e", "primary_energy_unit": "GeV",
        "primary_pdg": "gen_pdg", "primary_eta": "gen_eta", "primary_phi": "gen_phi"}))

    proc = fastshower("geometry", "import", "cells.csv", "--config", "layers.yaml", "--out",
                      "mine.h5", cwd=tmp_path)
    assert proc.returncode == 0 and "table geometry" in proc.stdout, proc.stdout
    proc = fastshower("import-hits", "ntuple.root", "--geometry", "mine.h5", "--branches",
                      "branches.yaml", "--set", "step=25", "--out", "mine/hits.root",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "60 showers" in proc.stdout and "3 hits with detids not in mine.h5" in proc.stdout
    mine = load(tmp_path / "mine.h5")
    imported, meta = read_sample(tmp_path / "mine" / "hits.root")
    assert meta["geometry_hash"] == mine.hash and meta["import"]["unknown_detid_hits"] == 3
    # the same showers: cells (the table kept the keys and their order), energies, times
    for a, b in zip(imported.flat(), batch.flat(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(imported.cell_time[0]),
                               np.asarray(batch.cell_time[0]), atol=1e-6)  # earliest hit
    np.testing.assert_allclose(imported.primaries.direction, batch.primaries.direction,
                               atol=1e-9)
    assert imported.lost_energy[0] == pytest.approx(6.0) and np.all(imported.lost_energy[1:] == 0)

    proc = fastshower("train", "--model", "layerhits", "--data", "mine", "--geometry",
                      "mine.h5", "--out", "run", "--set", "max_steps=12", "--set",
                      "val_every=6", "--set", "val_showers=10", "--set",
                      "layerhits.flow_hidden=16", "--set", "layerhits.flow_transforms=1",
                      "--set", "layerhits.hidden=8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    proc = fastshower("generate", "--run", "run", "--geometry", "mine.h5", "--primaries-from",
                      "mine", "--out", "gen/showers.root", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    proc = fastshower("validate", "--reference", "mine", "--generated", "gen", "--geometry",
                      "mine.h5", "--out", "report", cwd=tmp_path)
    assert proc.returncode == 0 and "classifier AUC" in proc.stdout, proc.stdout
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    proc = fastshower("export-model", "--run", "run", "--geometry", "mine.h5", "--out", "onnx",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert (tmp_path / "onnx" / "model.onnx").is_file()
