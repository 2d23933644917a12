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
