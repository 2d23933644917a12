"""Geometry: cell tables, tiling, neighbour graph, lookup, file round trip, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import shapely

from fastshower.errors import GeometryError
from fastshower.geometry import SCINTILLATOR, SILICON, build_geometry, load, save
from fastshower.geometry.neighbours import LONGITUDINAL, SC_SC, SI_SC, SI_SI


@pytest.fixture(scope="module")
def hgcal():
    return build_geometry("hgcal")


@pytest.fixture(scope="module")
def grid():
    return build_geometry("grid")


def in_layer_degree(geom):
    src = geom.edges[0][geom.edge_kind != LONGITUDINAL]
    return np.bincount(src, minlength=geom.n_cells)


def test_hgcal_layers_follow_the_design(hgcal):
    layers = hgcal.layers
    assert len(layers) == 47
    assert [lay.section for lay in layers].count("CE-E") == 26
    assert layers[0].z > 3210.5 and abs(layers[25].z - 3620) < 2 and abs(layers[46].z - 5140) < 3
    leads = [t for lay in layers for m, t in lay.absorbers if m == "G4_Pb"]
    assert len(leads) == 13 and min(leads) == pytest.approx(2.8) and max(leads) == 8.2
    steel = [t for lay in layers[26:] for m, t in lay.absorbers if m == "G4_STAINLESS-STEEL"]
    assert steel == [41.5] * 7 + [60.7] * 14
    depth = np.array([lay.depth_x0 for lay in layers])
    assert np.all(np.diff(depth) > 0)
    assert 25 < layers[25].depth_x0 < 29  # CE-E is about 26-28 X0


def test_roi_has_both_cell_types_and_the_border(hgcal):
    c = hgcal.cells
    assert np.all(c["type"][c["layer"] < 26] == SILICON)
    assert (c["type"] == SCINTILLATOR).sum() > 100
    border_layers = np.unique(c["layer"][hgcal.edges[0][hgcal.edge_kind == SI_SC]])
    assert len(border_layers) >= 2 and np.all(border_layers >= 33)


def test_cell_areas(hgcal):
    c = hgcal.cells
    si = c["type"] == SILICON
    full = np.isclose(c["area"], 118.0, rtol=1e-3)
    assert full[si].mean() > 0.75  # the rest are cut by wafer edges
    assert np.all(c["area"][si] <= 118.0 * (1 + 1e-4))
    tiles = c["area"][~si]
    assert 400 < tiles.min() and tiles.max() < 2000  # a few cm on a side
    hd = build_geometry("hgcal", {"eta": 2.8, "roi_radius": 60.0}, neighbours=False)
    assert np.median(hd.cells["area"]) == pytest.approx(52.0, rel=1e-4)
    assert np.median(hd.cells["thickness"]) == pytest.approx(0.12)


def test_wafer_cells_tile_the_wafer_exactly(hgcal):
    seg = hgcal.segmentation
    wafer_area = np.sqrt(3) / 2 * seg.wafer_pitch**2
    for hd in (False, True):
        area = seg.wafer_template(hd)[4]
        assert area.sum() == pytest.approx(wafer_area, rel=1e-9)


@pytest.mark.parametrize("layer", [0, 39])
def test_random_points_fall_in_exactly_one_cell(hgcal, layer):
    c = hgcal.cells
    idx = np.flatnonzero(c["layer"] == layer)
    polys = shapely.polygons(np.where(np.isnan(c["corners"][idx]), c["corners"][idx][:, :1],
                                      c["corners"][idx]))
    cx, cy = 0.0, hgcal.layers[layer].z / np.sinh(2.0)  # the region's axis: eta 2, phi 90 deg
    rng = np.random.default_rng(7)
    r, a = 120 * np.sqrt(rng.uniform(size=5000)), rng.uniform(0, 2 * np.pi, 5000)
    x, y = cx + r * np.cos(a), cy + r * np.sin(a)  # well inside the 150 mm region of interest
    ids = hgcal.lookup(np.full(x.shape, layer), x, y)
    assert np.all(ids >= 0)
    pos = np.searchsorted(idx, ids)
    assert np.all(shapely.contains_xy(polys[pos], x, y) | shapely.touches(
        polys[pos], shapely.points(x, y)))
    tree = shapely.STRtree(polys)
    hits = tree.query(shapely.points(x, y), predicate="intersects")
    assert np.all(np.bincount(hits[0], minlength=len(x)) == 1)


def test_lookup_round_trip_and_outside(hgcal):
    c = hgcal.cells
    ids = hgcal.lookup(c["layer"], c["x"], c["y"])
    assert np.array_equal(ids, np.arange(hgcal.n_cells))
    out = hgcal.lookup(np.array([0, 0, 10]), np.array([0.0, 5000.0, 0.0]),
                       np.array([0.0, 0.0, -900.0]))
    assert np.all(out == -1)


def test_neighbour_graph_is_symmetric_without_self_loops(hgcal):
    src, dst = hgcal.edges.astype(np.int64)
    assert np.all(src != dst)
    fwd = np.unique(src << 32 | dst)
    bwd = np.unique(dst << 32 | src)
    assert len(fwd) == len(src) and np.array_equal(fwd, bwd)
    kinds = set(np.unique(hgcal.edge_kind).tolist())
    assert kinds == {SI_SI, SC_SC, SI_SC, LONGITUDINAL}


def test_interior_hexagon_has_six_neighbours(hgcal):
    c = hgcal.cells
    layer0 = np.flatnonzero(c["layer"] == 0)
    centre = np.array([np.median(c["x"][layer0]), np.median(c["y"][layer0])])
    full = layer0[np.isclose(c["area"][layer0], 118.0, rtol=1e-4)]
    d = np.hypot(c["x"][full] - centre[0], c["y"][full] - centre[1])
    degree = in_layer_degree(hgcal)
    assert np.all(degree[full[d < 60]] >= 6)
    # A cell inside a wafer (its six neighbours whole hexagons too) has exactly six.
    inner = full[d < 60][degree[full[d < 60]] == 6]
    assert len(inner) > 50
    nbr = hgcal.edges[1][(hgcal.edges[0] == inner[0]) & (hgcal.edge_kind == SI_SI)]
    dist = np.hypot(c["x"][nbr] - c["x"][inner[0]], c["y"][nbr] - c["y"][inner[0]])
    assert np.allclose(dist, np.sqrt(2 * 118.0 / np.sqrt(3)), rtol=1e-3)  # the lattice pitch


def test_longitudinal_links_go_to_adjacent_layers(hgcal):
    lon = hgcal.edge_kind == LONGITUDINAL
    la = hgcal.cells["layer"][hgcal.edges[0][lon]].astype(int)
    lb = hgcal.cells["layer"][hgcal.edges[1][lon]].astype(int)
    assert np.all(np.abs(la - lb) == 1)
    mid = np.flatnonzero(hgcal.cells["layer"] == 10)[300]
    nbr_layers = set(hgcal.cells["layer"][hgcal.edges[1][(hgcal.edges[0] == mid) & lon]])
    assert nbr_layers == {9, 11}


def test_border_edges_join_silicon_to_scintillator(hgcal):
    c = hgcal.cells
    border = hgcal.edge_kind == SI_SC
    a, b = hgcal.edges[:, border]
    assert border.sum() > 50
    assert np.all(c["type"][a] != c["type"][b]) and np.all(c["layer"][a] == c["layer"][b])
    # Touching across the border: centres no further apart than the two cells' half-diagonals.
    dist = np.hypot(c["x"][a] - c["x"][b], c["y"][a] - c["y"][b])
    assert np.all(dist < 0.75 * (np.sqrt(c["area"][a]) + np.sqrt(c["area"][b])))


def test_grid_geometry(grid):
    assert len(grid.layers) == 85
    assert grid.n_cells == 25 * 51 * 51 + 60 * 11 * 11
    degree = in_layer_degree(grid)
    c = grid.cells
    interior = (c["layer"] == 3) & (np.abs(c["x"]) < 100) & (np.abs(c["y"]) < 100)
    assert np.all(degree[interior] == 8)  # four sides and four corners within 0.5 cm
    layer3 = np.flatnonzero(c["layer"] == 3)
    corner = layer3[np.argmin(c["x"][layer3] + c["y"][layer3])]
    assert degree[corner] == 3
    ids = grid.lookup(c["layer"], c["x"], c["y"])
    assert np.array_equal(ids, np.arange(grid.n_cells))


def test_file_round_trip_with_hash(hgcal, tmp_path):
    path = save(hgcal, tmp_path / "g.h5")
    back = load(path)
    assert back.hash == hgcal.hash
    assert np.array_equal(back.edges, hgcal.edges)
    x, y = hgcal.cells["x"][:100], hgcal.cells["y"][:100]
    assert np.array_equal(back.lookup(hgcal.cells["layer"][:100], x, y), np.arange(100))


def test_corrupt_truncated_and_wrong_version_files_are_refused(hgcal, tmp_path):
    path = save(hgcal, tmp_path / "g.h5")
    with h5py.File(path, "r+") as f:
        f["cells/area"][0] += 1.0
    with pytest.raises(GeometryError, match="hash"):
        load(path)

    path = save(hgcal, tmp_path / "g2.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(GeometryError, match="corrupt or truncated"):
        load(tmp_path / "cut.h5")

    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(GeometryError, match="version 99"):
        load(path)

    (tmp_path / "junk.h5").write_text("not a geometry")
    with pytest.raises(GeometryError):
        load(tmp_path / "junk.h5")


def test_bad_builder_and_config():
    with pytest.raises(GeometryError, match="unknown geometry builder 'cube'"):
        build_geometry("cube")
    with pytest.raises(GeometryError, match="bad hgcal geometry config"):
        build_geometry("hgcal", {"roi_radius": "wide"})


@pytest.mark.parametrize("builder, name", [("hgcal", "hgcal_roi"), ("grid", "clic_grid")])
def test_shipped_configs_describe_the_defaults(builder, name, hgcal, grid):
    import pathlib

    import yaml

    path = pathlib.Path(__file__).parents[1] / "configs" / "geometry" / f"{name}.yaml"
    geom = build_geometry(builder, yaml.safe_load(path.read_text()))
    assert geom.hash == (hgcal if builder == "hgcal" else grid).hash
