"""The 3DGAN of issue 18 on the CLIC-like grid: images in shower coordinates, the training
step of both players, and generation back onto the grid's cells."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.geometry.showers import axis_points
from fastshower.inference.generate import load_generator
from fastshower.inference.onnx import OnnxGenerator, export_model
from fastshower.models.files import read_history
from fastshower.models.gan3d import (
    COARSE,
    COARSE_SHAPE,
    DEPTH,
    FINE_SHAPE,
    FINE_VOXELS,
    FLOOR_MIP,
    LAYERS,
    VOXELS,
    WINDOW,
    AxisShift,
    Gan3D,
    Gan3DConfig,
    Generator,
    Observables,
    SummaryLaw,
    Values,
    images,
    leakage,
    leakage_factor,
    physics_distance,
    place_image,
    slide,
    split,
    voxel_cells,
    voxel_floors,
)
from fastshower.simhits import read_sample
from fastshower.simulation.gun import GunConfig, sample_primaries
from fastshower.simulation.jobs import simulate
from fastshower.training.loop import TrainConfig, fidelity, train
from fastshower.training.tune import TuneConfig, tune


@pytest.fixture(scope="module")
def grid_sample(tmp_path_factory):
    """60 electrons of 10-30 GeV at 0-30 degrees through the centre of the grid's front face."""
    tmp = tmp_path_factory.mktemp("gan3d")
    geom = build_geometry("grid")
    gpath = save(geom, tmp / "grid.h5")
    gun = GunConfig(particle="e-", energy=[10.0, 30.0], spectrum="uniform", theta_deg=(0.0, 30.0),
                    phi_deg=(0.0, 360.0), aim_mm=(0.0, 0.0, 1500.0))
    simulate(gpath, gun, 60, tmp / "e-", jobs=2, seed=3, show_progress=False)
    return geom, gpath, tmp


def test_images_follow_the_shower_and_go_back_onto_the_same_cells(grid_sample):
    geom, _, tmp = grid_sample
    batch = read_sample(tmp / "e-")[0]
    n_fine = int(np.prod(FINE_SHAPE))
    # the fine image's middle cell holds the axis point, and its cells step by one cell along
    # x and y; cells that leave the grid are -1
    far = GunConfig(particle="e-", energy=[50.0], theta_deg=(20.0, 30.0), phi_deg=(0.0, 360.0),
                    aim_mm=(110.0, -120.0, 1500.0))
    for primaries in (batch.primaries, sample_primaries(far, 20, np.random.default_rng(4))):
        cells = voxel_cells(geom, primaries, np.random.default_rng(0))
        assert cells.shape == (len(primaries), VOXELS)
        ids = cells[:, :n_fine].reshape(-1, *FINE_SHAPE)
        axis = axis_points(primaries, geom)[:, :LAYERS]
        middle = geom.lookup(np.broadcast_to(np.arange(LAYERS), axis.shape[:2]), axis[..., 0],
                             axis[..., 1])
        assert np.array_equal(ids[..., WINDOW // 2, WINDOW // 2], middle)
        x, y = geom.cells["x"][ids], geom.cells["y"][ids]
        valid = ids >= 0
        for ax, along, across in ((2, x, y), (3, y, x)):
            both = np.delete(valid, 0, ax) & np.delete(valid, -1, ax)
            np.testing.assert_allclose(np.diff(along, axis=ax)[both], 5.1, rtol=1e-5)
            np.testing.assert_allclose(np.diff(across, axis=ax)[both], 0.0, atol=1e-4)
        assert (ids < 0).any() == (primaries is not batch.primaries)
        # a coarse voxel: a cell of its 5 x 5 block in the ECAL (none under the fine image),
        # the cell itself in the HCAL; no cell twice
        coarse = cells[:, n_fine:].reshape(-1, *COARSE_SHAPE)
        layer = geom.cells["layer"][np.maximum(coarse, 0)]
        assert np.all((coarse < 0) | (layer == np.arange(DEPTH)[:, None, None]))
        assert np.all(coarse[:, :LAYERS, 3:8, 3:8] == -1)
        c = COARSE // 2
        for block in (1, 3):  # cells 5 b - 2 ... 5 b + 2 from the axis cell
            cell = coarse[:, :LAYERS, c, c + block]
            ok = cell >= 0
            offset = (geom.cells["y"][cell] - axis[..., 1]) / 5.1  # the axis: within a cell
            assert np.all((offset[ok] > 5 * block - 3) & (offset[ok] < 5 * block + 3))
        for row in cells:
            assert len(np.unique(row[row >= 0])) == (row >= 0).sum()
    e, outside = images(batch, geom)
    event, ids, energy = batch.flat()
    # the images hold almost all of the energy at every angle (inclined showers too)
    assert e.sum() == pytest.approx(energy.sum() - outside.sum(), rel=1e-6)
    assert e.sum() / energy.sum() > 0.995
    # the shower's maximum sits in the middle of the fine image
    profile = e[:, :n_fine].reshape(-1, *FINE_SHAPE).sum((0, 1))
    assert np.unravel_index(profile.argmax(), profile.shape) == (WINDOW // 2, WINDOW // 2)
    placed = place_image(e, batch.primaries, geom, np.random.default_rng(1))
    again, _ = images(placed, geom)
    layer = np.concatenate([np.indices(FINE_SHAPE)[0].ravel(),
                            np.indices(COARSE_SHAPE)[0].ravel()])
    mip = geom.mip_energy[geom.lookup(layer, 0.0, 0.0)]  # each layer's sensors
    kept = np.where(e >= FLOOR_MIP * mip, e, 0.0)
    # the fine image goes back onto the same cells, a coarse voxel onto a cell of its block
    # (so into the same voxel) where that cell is on the grid
    np.testing.assert_allclose(again[:, :n_fine], kept[:, :n_fine], rtol=1e-6)
    coarse, kept = again[:, n_fine:], kept[:, n_fine:]
    assert np.all(np.isclose(coarse, kept, rtol=1e-6) | (coarse == 0))
    assert coarse.sum() > 0.99 * kept.sum() and (kept[:, LAYERS * COARSE ** 2:] > 0).any()


def test_the_axis_shift_moves_images_to_the_primarys_line(grid_sample):
    geom, _, tmp = grid_sample
    batch = read_sample(tmp / "e-")[0]
    p = batch.primaries
    shift = AxisShift(geom)
    position, direction = torch.from_numpy(p.position_mm), torch.from_numpy(p.direction)
    # the offsets: from the axis cell's centre to the line, in cells
    axis = axis_points(p, geom)[:, :DEPTH]
    layer = np.broadcast_to(np.arange(DEPTH), axis.shape[:2])
    ids = geom.lookup(layer, axis[..., 0], axis[..., 1])
    size = geom.segmentation.cell_size[layer]
    u = shift.offsets(position, direction).numpy()
    on = ids >= 0  # the line still on the grid
    assert on.mean() > 0.9
    for k, x in ((0, "x"), (1, "y")):
        np.testing.assert_allclose(u[:, k][on], ((axis[..., k] - geom.cells[x][ids]) / size)[on],
                                   atol=1e-5)
    # Geant4's showers are centred there: their fine images' centroids around the maximum
    # follow the offsets (on 300 held-out showers of 10-510 GeV, centroid = 0.8-0.9 offset
    # in layers 6-14, the rest's spread 0.15 cells; here 60 of 10-30 GeV: correlation 0.57)
    e, _ = images(batch, geom)
    fine = torch.from_numpy(e[:, :FINE_VOXELS]).reshape(-1, *FINE_SHAPE)[:, 6:15]
    r = torch.arange(WINDOW) - WINDOW // 2.0
    cx = ((fine.sum(3) * r).sum(2) / fine.sum((2, 3)).clamp(min=1e-9)).numpy().ravel()
    slope, _ = np.polyfit(u[:, 0, 6:15].ravel(), cx, 1)
    assert np.corrcoef(cx, u[:, 0, 6:15].ravel())[0, 1] > 0.45 and 0.6 < slope < 1.1
    # a point at the axis cell's centre of every layer: moved to the line, energy kept
    point = torch.zeros(len(p), VOXELS)
    point[:, :FINE_VOXELS].view(-1, *FINE_SHAPE)[:, :, WINDOW // 2, WINDOW // 2] = 1
    moved = shift(point, shift.offsets(position, direction))[:, :FINE_VOXELS]
    moved = moved.reshape(-1, *FINE_SHAPE)
    torch.testing.assert_close(moved.sum((2, 3)), torch.ones(len(p), LAYERS))
    np.testing.assert_allclose((moved.sum(3) * r).sum(2).numpy(), u[:, 0, :LAYERS], atol=1e-5)
    np.testing.assert_allclose((moved.sum(2) * r).sum(2).numpy(), u[:, 1, :LAYERS], atol=1e-5)


def test_the_smooth_observables_are_the_validations(grid_sample):
    from fastshower.validation.observables import high_level

    geom, _, tmp = grid_sample
    batch = read_sample(tmp / "e-")[0]
    e, _ = images(batch, geom)
    mip = (geom.mip_energy[0], geom.mip_energy[-1])  # the ECAL's and the HCAL's sensors
    e = np.where(e >= voxel_floors(mip), e, 0.0)
    placed = place_image(e, batch.primaries, geom, np.random.default_rng(0))
    truth = high_level(placed, geom)
    p = batch.primaries
    line = AxisShift(geom).offsets(torch.from_numpy(p.position_mm), torch.from_numpy(p.direction))
    energies = torch.from_numpy(e).requires_grad_()
    obs = Observables(geom, mip)(energies, line)
    obs[:, 0].sum().backward()  # the hit count's gradient: at the cells near the threshold
    near = np.abs(e / (voxel_floors(mip) * 5) - 1) < 0.1
    assert np.all(energies.grad.numpy()[near] > 0) and np.all(energies.grad.numpy()[e == 0] == 0)
    obs = obs.detach().double().numpy()
    assert obs.shape == (len(batch), 34)
    np.testing.assert_allclose(np.expm1(obs[:, 0]), truth["n_hits"], rtol=0.005)
    # voxel centres (a block's, not the cell's drawn in it: a far block moves a width by up
    # to a fifth)
    rel = np.abs(obs[:, 1] / truth["width_r"] - 1)
    assert np.mean(rel < 0.05) > 0.9 and rel.max() < 0.3
    np.testing.assert_allclose(obs[:, 2], truth["core_fraction"], atol=0.01)
    for k, name in ((3, "centre_x"), (4, "centre_y")):  # mm
        off = np.abs(obs[:, k] - truth[name])
        assert np.mean(off < 0.3) > 0.9 and off.max() < 1.0
    assert np.corrcoef(obs[:, 5], truth["centroid_depth_x0"])[0, 1] > 0.95
    assert np.all(obs[:, 6] > 1) and np.all(obs[:, 6] < 10)  # layers
    np.testing.assert_allclose(obs[:, 7:].sum(1), 1.0, rtol=1e-5)  # the profile's fractions


def test_the_physics_distance_compares_laws_given_the_conditions():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(256, 2, generator=g)
    y = 3 * c[:, :1] + 0.1 * torch.randn(256, 1, generator=g)  # steep in c, narrow given c
    again = 3 * c[:, :1] + 0.1 * torch.randn(256, 1, generator=g)
    shifted = y + 0.3  # three spreads at fixed c, a tenth of the spread over all c
    for given in ("joint", "residual"):
        assert physics_distance(y, y, c, given) == 0
    same, off = (physics_distance(x, y, c, "residual").item() for x in (again, shifted))
    assert off > 20 * same
    # the joint form sees the shift too, but weighs it far less
    assert physics_distance(shifted, y, c, "joint") < off / 5
    # two observables each with Geant4's law given c, but their correlation reversed: only
    # the correlated form sees it
    u = torch.randn(256, 1, generator=g)
    pair = torch.cat([c[:, :1] + 0.1 * u, c[:, :1] + 0.1 * u], -1)  # correlated given c
    flipped = torch.cat([pair[:, :1], c[:, :1] - 0.1 * u], -1)
    wide = torch.cat([pair, torch.zeros(256, 5)], -1), torch.cat([flipped, torch.zeros(256, 5)], -1)
    marginal = physics_distance(*wide, c, "residual")
    assert physics_distance(*wide, c, "correlated") - marginal > 10 * marginal


def test_the_depth_shift_slides_both_images_along_their_layers():
    x = torch.rand(2, 6, 3, 3)
    y = slide(x, torch.tensor([2.0, -0.5]))
    assert torch.equal(y[0, 2:], x[0, :-2]) and torch.equal(y[0, :2], x[0, [0, 0]])
    torch.testing.assert_close(y[1, :-1], 0.5 * (x[1, :-1] + x[1, 1:]))
    torch.testing.assert_close(y[1, -1], 0.5 * x[1, -1])  # half of the last layer slid out
    # the generator's knob: its network's output moves whole showers
    g = Generator(8, 5, 2, depth_shift=3.0)
    z, c = torch.randn(4, 8), torch.randn(4, 5)
    with torch.no_grad():
        g.depth[-1].bias.copy_(torch.tensor([0.0, -30.0]))  # s = 0
        before = split(g(z, c))[0]
        g.depth[-1].bias[0] = float(np.arctanh(1 / 3))  # s = 3 tanh(atanh(1/3)) = 1 layer
        after = split(g(z, c))[0]
    torch.testing.assert_close(after[:, 1:], before[:, :-1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after[:, 0], before[:, 0], atol=1e-5, rtol=1e-4)


def test_the_leakage_law_sets_the_hcals_share_and_keeps_the_total():
    e = torch.rand(3, VOXELS, dtype=torch.float64)
    e[2, FINE_VOXELS:].view(DEPTH, -1)[LAYERS:] = 0  # no HCAL energy: nothing to scale up
    f = torch.tensor([0.01, 0.3, 0.2], dtype=torch.float64)
    moved = e * leakage_factor(leakage(e)[0], f)
    share, depth = leakage(moved)
    torch.testing.assert_close(share[:2], f[:2])
    assert share[2] == 0
    torch.testing.assert_close(moved.sum(1), e.sum(1))
    torch.testing.assert_close(depth, leakage(e)[1])  # the ECAL's profile kept
    # the depth: the ECAL's energy-weighted mean layer over LAYERS
    one = torch.zeros(1, VOXELS, dtype=torch.float64)
    one[0, 7 * WINDOW ** 2] = 1.0  # layer 7 of the fine image
    torch.testing.assert_close(leakage(one)[1], torch.tensor([7 / LAYERS], dtype=torch.float64))


def test_the_summary_law_standardises_observables_and_draws_their_joint_law():
    """A skewed depth whose mean and spread follow the conditions and a width correlated with
    it: each d is standard given the conditions, and drawn with the training d's law."""
    rng = np.random.default_rng(0)
    x, theta = rng.uniform(-1.7, 1.7, 20_000), rng.uniform(0.0, 0.5, 20_000)
    skewed = rng.gamma(2.0, 1.0, len(x)) - 2.0  # mean 0, spread sqrt(2), a long deep tail
    obs = np.zeros((len(x), Observables.COLUMNS))
    obs[:, 5] = 10 + 2 * x - 3 * theta ** 2 + np.sqrt(1 + 0.4 * x) * skewed  # the depth
    obs[:, 1] = 18 - x + 0.6 * skewed + rng.normal(0, 0.5, len(x))  # the width
    cond = torch.from_numpy(np.stack([x, theta], -1))
    law = SummaryLaw(SummaryLaw.fit(["depth", "width"], torch.from_numpy(obs), cond))
    d = law.standardise(torch.from_numpy(obs).float(), cond.float()).numpy()
    for part in (x < -0.5, x > 0.5):  # the same law at every energy
        assert np.all(np.abs(d[part].mean(0)) < 0.05)
        np.testing.assert_allclose(d[part].std(0), 1.0, atol=0.05)
    drawn = law.draw(torch.from_numpy(rng.standard_normal((20_000, 2))).float()).numpy()
    for k in range(2):
        assert stats.ks_2samp(d[:, k], drawn[:, k]).statistic < 0.02
    # the depth skewed as the gamma: its median (1.678) below its mean (2), in its spread
    assert np.median(drawn[:, 0]) == pytest.approx((1.678 - 2) / np.sqrt(2), abs=0.03)
    assert stats.spearmanr(*drawn.T)[0] == pytest.approx(stats.spearmanr(*d.T)[0], abs=0.03)
    # the noise that gives chosen summaries
    np.testing.assert_allclose(law.draw(law.noise(torch.from_numpy(drawn))).numpy(), drawn,
                               atol=1e-4)
    # the generator's bias maps get a slope in d, its last condition
    g = Generator(latent=4, conditions=6, channels=2, bias_maps=True, summaries=1)
    for net in (g.net, g.coarse):
        torch.nn.init.zeros_([m for m in net if hasattr(m, "weight")][-1].weight)
    deep = np.ravel_multi_index((20, WINDOW // 2, WINDOW // 2), FINE_SHAPE)
    with torch.no_grad():
        g.bias[2, deep] = 1.0
        c = torch.zeros(2, 6)
        c[:, 5] = torch.tensor([-1.0, 2.0])
        out = g(torch.randn(2, 4), c)
    assert out[0, deep] == 0 and out[1, deep] > 1.5


@pytest.mark.parametrize("kind,unit", [("sqrt", None), ("log", None),
                                       ("sqrt", [1.0, 1.0, 1e-2, 1e-4])])
def test_image_values_encode_energies_and_rescale_them(kind, unit):
    values = Values(kind, floor_mev=0.1, unit=unit)
    energy = torch.tensor([1e4, 3e5], dtype=torch.float64)
    e = torch.tensor([[0.05, 0.1, 2.0, 3e3], [0.0, 0.3, 40.0, 5e4]], dtype=torch.float64)
    x = values.encode(e, energy)
    torch.testing.assert_close(values.decode(x, energy), e)
    torch.testing.assert_close(values.response(x, energy), e.sum(1) / energy)
    torch.testing.assert_close(values.decode(values.rescale(x, torch.tensor([2.0, 0.5],
                                                                            dtype=torch.float64)),
                                             energy), e * torch.tensor([[2.0], [0.5]]))
    r = torch.tensor([0.02, 0.03], dtype=torch.float64)
    torch.testing.assert_close(values.response(values.with_response(x, energy, r), energy), r)
    # a factor of 0 (leakage: a real shower's empty HCAL) empties the cells, with a finite
    # gradient (the root's was infinite: 0.5 % of the training steps were skipped)
    factor = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64,
                          requires_grad=True)
    moved = values.rescale(x.detach().requires_grad_(), factor)
    assert (values.decode(moved, energy)[factor == 0] <= 1e-11 * e[factor == 0]).all()
    moved.sum().backward()
    assert torch.isfinite(factor.grad).all()
    # the floor's value is that of a cell of the floor energy, in every image
    torch.testing.assert_close(values.decode(values.floor(x, energy), energy),
                               torch.full(x.shape, 0.1, dtype=torch.float64))
    if kind == "log":  # the floor at ln 2 whatever the shower's energy
        assert torch.allclose(values.floor(x, energy), torch.tensor(np.log(2.0)).double())
    if unit is not None:  # a voxel of unit 1e-4 shows its energy 100 times larger
        plain = Values(kind, floor_mev=0.1).encode(e, energy)
        torch.testing.assert_close(x, plain * torch.tensor([1.0, 1.0, 10.0, 100.0]).double())


def test_the_bias_maps_put_fixed_structure_into_every_image():
    torch.manual_seed(0)
    gen = Generator(latent=4, conditions=5, channels=2, bias_maps=True)
    for net in (gen.net, gen.coarse):  # the convolutions' output zero: the maps alone
        last = [m for m in net if hasattr(m, "weight")][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    centre = np.ravel_multi_index((10, WINDOW // 2, WINDOW // 2), FINE_SHAPE)
    under = FINE_VOXELS + np.ravel_multi_index((10, COARSE // 2, COARSE // 2), COARSE_SHAPE)
    with torch.no_grad():
        gen.bias[0, [centre, under]] = 1.0
        gen.bias[1, centre] = 0.5
        cond = torch.zeros(3, 5)
        cond[:, 0] = torch.tensor([-1.0, 0.0, 1.0])  # the standardised ln E
        image = gen(torch.randn(3, 4), cond)
    torch.testing.assert_close(image[:, centre], torch.tensor([0.5, 1.0, 1.5]))
    assert image.count_nonzero() == 3  # the coarse voxel under the fine image stays empty


def test_a_generator_started_from_the_mean_shower_has_geant4s_core(grid_sample):
    geom, _, tmp = grid_sample
    data = Gan3D.training_data(read_sample(tmp / "e-")[0], geom)
    cfg = Gan3DConfig(channels=4, latent=8, sparse=True, bias_maps=True, bias_init="mean")
    torch.manual_seed(0)  # the networks' start
    model = Gan3D.build(data, geom, cfg, seed=0)
    with torch.no_grad():
        fake = model.generator(torch.randn(len(data), 8), model.conditions(data.primaries))
    fine = model.values.decode(fake, torch.from_numpy(data.primaries.energy_mev).float())
    fine = fine[:, :FINE_VOXELS].reshape(-1, *FINE_SHAPE)[:, 5:15].sum(1)  # layers 5-14
    real = torch.from_numpy(data.energy_mev[:, :FINE_VOXELS]).reshape(-1, *FINE_SHAPE)
    real = real[:, 5:15].sum(1)
    centre = WINDOW // 2 * WINDOW + WINDOW // 2
    assert (fine.flatten(1).argmax(1) == centre).float().mean() > 0.9  # the axis cell
    # the core's share of the energy, within 20 % of Geant4's
    share, geant4 = ((x[:, 11:14, 11:14].sum((1, 2)) / x.sum((1, 2))).mean().item()
                     for x in (fine, real))
    assert share == pytest.approx(geant4, rel=0.2)


@pytest.mark.parametrize("response_law,values", [(False, "sqrt"), (True, "sqrt"), (True, "log")])
def test_gan3d_trains_both_players_and_generates_grid_showers(grid_sample, response_law, values):
    geom, gpath, tmp = grid_sample
    cfg = TrainConfig(model="gan3d", max_steps=6, val_every=3, val_showers=10, warmup_steps=1,
                      patience=100, gan3d={"channels": 4, "latent": 8, "batch": 8,
                                           "response_law": response_law, "sparse": response_law,
                                           "values": values, "minibatch_std": values == "log",
                                           "shift": response_law and values == "sqrt",
                                           "physics_weight": 1.0 if response_law else 0.0,
                                           "depth_shift": 2.0 if response_law else 0.0,
                                           "d_observables": not response_law,
                                           "leakage_law": values == "log",
                                           "voxel_scale": 0.5 if values == "sqrt" else 0.0,
                                           "bias_maps": response_law and values == "sqrt",
                                           "summaries": ["depth", "hits"] if response_law
                                           and values == "sqrt" else [],
                                           "summary_weight": 1.0,
                                           "physics_direction": response_law,
                                           "physics_given": "residual" if values == "sqrt"
                                           else "joint"})
    run = tmp / f"run_{response_law}_{values}"
    record = train(str(tmp / "e-"), gpath, run, cfg, show_progress=False)
    assert record["step"] == 6 and np.isfinite(record["val_loss"])
    model = load_generator(run, geom)
    assert isinstance(model, Gan3D)
    if model.cfg.voxel_scale:  # voxel units relative to the core's: 1 at an axis voxel
        unit = model.values.unit.reshape(-1)[:FINE_VOXELS].reshape(FINE_SHAPE)
        assert unit.max() == 1 and unit[:, WINDOW // 2, WINDOW // 2].max() == 1
        assert unit.min() < 1e-2
    # each player's gradient comes from its own terms only
    data = Gan3D.training_data(read_sample(tmp / "e-")[0], geom)
    terms = model.train()(data, np.random.default_rng(0))
    assert (terms["g_physics"][0] > 0) == (model.cfg.physics_weight > 0)
    terms["g_adv"][0].backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    model.zero_grad()
    terms = model(data, np.random.default_rng(0))
    terms["d_adv"][0].backward()
    assert all(p.grad is None for p in model.generator.parameters())
    model.zero_grad()
    assert (terms["g_summaries"][0] > 0) == bool(model.cfg.summaries)
    if model.cfg.summaries:  # the generator learns to give each shower its summaries
        opt = torch.optim.Adam(model.generator.parameters(), lr=3e-3)
        follow = []
        for _ in range(15):
            term = model(data, np.random.default_rng(0))["g_summaries"][0]
            opt.zero_grad()
            term.backward()
            assert all(p.grad is None for p in model.discriminator.parameters())
            opt.step()
            follow.append(term.item())
        assert follow[-1] < 0.5 * follow[0]
    # with minibatch_std the discriminator's verdict on a shower depends on its mini-batch
    x = model.values.encode(torch.from_numpy(data.energy_mev[:8]),
                            torch.from_numpy(data.primaries.energy_mev[:8]).float())
    r = torch.zeros(8)
    extra = (Observables.COLUMNS + 2) * model.cfg.d_observables + len(model.cfg.summaries)
    seen = torch.zeros(8, extra) if extra else None
    with torch.no_grad():
        alone, mixed = (model.discriminator(x[i], r[i], seen if seen is None else seen[i])[0, 0]
                        for i in ([0, 1, 2], [0, 5, 7]))
        if seen is not None:  # its verdict depends on the observables or the depth d
            assert model.discriminator(x[:1], r[:1], seen[:1] + 1)[0, 0] != \
                model.discriminator(x[:1], r[:1], seen[:1])[0, 0]
    assert (alone != mixed) == model.cfg.minibatch_std
    # generation: cells of the grid's ECAL and HCAL, above the floor, the same for the same seed
    gun = GunConfig(particle="e-", energy=[20.0], theta_deg=(10.0, 20.0), phi_deg=(0.0, 360.0),
                    aim_mm=(0.0, 0.0, 1500.0))
    primaries = sample_primaries(gun, 5, np.random.default_rng(1))
    with torch.no_grad():
        showers = model.sample(primaries, np.random.default_rng(2))
    event, ids, energy = showers.flat()
    assert len(showers) == 5 and np.all(geom.cells["layer"][ids] < DEPTH)
    assert np.all(energy >= FLOOR_MIP * geom.mip_energy[ids])
    again = model.sample(primaries, np.random.default_rng(2)).flat()
    assert np.array_equal(again[1], ids) and np.array_equal(again[2], energy)
    if response_law:  # the image holds exactly the response drawn from the law
        program = model.export_module()
        e_p = torch.from_numpy(primaries.energy_mev)
        args = (e_p, torch.zeros(5, 3), torch.from_numpy(primaries.direction),
                torch.zeros(5, dtype=torch.int64), torch.randn(5, 8), torch.randn(5, 1))
        z_leakage = torch.randn(5, 1) if model.cfg.leakage_law else None
        z_summaries = torch.randn(5, len(model.cfg.summaries))
        cond = model.conditions(primaries)
        if model.cfg.summaries:  # drawn: the last conditions
            cond = torch.cat([cond, model.summary_law.draw(z_summaries)], -1)
        with torch.no_grad():
            image, = program(*args, z_leakage=z_leakage, z_summaries=z_summaries)
            mean, log_sigma = model.generator.law(cond)
        r = torch.exp(mean + log_sigma.exp() * args[-1][:, 0])
        np.testing.assert_allclose(image.sum(1) / e_p, r, rtol=1e-4)
        # ... in the cells that are placed (at least the floor)
        placed = torch.where(image >= program.values.e0, image, 0.0)
        np.testing.assert_allclose(placed.sum(1) / e_p, r, rtol=2e-3)
        assert (terms["leakage_nll"][0] != 0) == model.cfg.leakage_law
        assert terms["response_nll"][0] != 0
    # ONNX Runtime: the same showers for the same seed (to float32 rounding, which moves a
    # few of the cells at the floor: the axis shift makes many small ones)
    onnx = OnnxGenerator(export_model(model, run / "onnx"), geom)
    o_event, o_ids, o_energy = onnx.sample(primaries, np.random.default_rng(2)).flat()
    assert abs(len(o_ids) - len(ids)) <= 2 + 0.005 * len(ids)
    np.testing.assert_allclose(np.bincount(o_event, o_energy, 5), np.bincount(event, energy, 5),
                               rtol=1e-3)


def test_gan3d_refuses_a_geometry_without_square_cells():
    from fastshower.models.gan3d import Gan3DConfig

    with pytest.raises(FastShowerError, match="grid geometry"):
        Gan3D(build_geometry("hgcal"), ["e-"], Gan3DConfig(),
              {"log_e_mean": 0.0, "log_e_std": 1.0, "ranges": {"energy_gev": [1, 2]}})


def test_a_step_with_a_non_finite_gradient_is_skipped(grid_sample):
    """A learning rate far too large: the first step makes the weights huge, the next ones'
    gradients overflow; those steps are skipped and counted, the weights stay finite."""
    geom, gpath, tmp = grid_sample
    cfg = TrainConfig(model="gan3d", max_steps=4, val_every=4, val_showers=10, warmup_steps=0,
                      lr=1e30, gan3d={"channels": 2, "latent": 4, "batch": 4})
    record = train(str(tmp / "e-"), gpath, tmp / "run_overflow", cfg, show_progress=False)
    assert record["step"] == 4 and 1 <= record["skipped_steps"] <= 3
    state = torch.load(tmp / "run_overflow" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"]["state_dict"].values())


def test_validation_can_choose_the_generator_by_the_classifier_test(grid_sample):
    """With val_classifier the validation record holds the classifier test's AUC: about 1 for
    showers 30 % too bright, lower for other Geant4 showers of the same law; the 3DGAN's
    weights are then chosen by it instead of the FPD."""
    geom, _, tmp = grid_sample
    batch = read_sample(tmp / "e-")[0]
    ref, same = batch.subset(slice(0, 30)), batch.subset(slice(30, 60))
    bright = dataclasses.replace(same, cell_energy=same.cell_energy * 1.3)
    assert "auc" not in fidelity(ref, same, geom)
    with torch.no_grad():  # as the trainer validates
        honest, wrong = (fidelity(ref, gen, geom, classifier=True) for gen in (same, bright))
    assert wrong["auc"] > 0.95 and honest["auc"] < 0.8 and 0 < honest["auc_std"] < 0.2
    model = Gan3D.build(Gan3D.training_data(batch, geom), geom, Gan3DConfig(channels=2), 0)
    assert model.selection_loss("generator", {"fpd": 3.0}) == 3.0
    assert model.selection_loss("generator", {"fpd": 3.0, "auc": 0.6}) == 0.6


def test_a_seed_grid_keeps_the_best_of_several_trainings(grid_sample):
    """fastshower tune with sampler grid trains each seed once (no pruning) and names the run
    whose chosen weights are best by the objective, here the generator's selection loss."""
    geom, gpath, tmp = grid_sample
    configs = pathlib.Path(__file__).parents[1] / "configs"
    search = yaml.safe_load((configs / "tune" / "gan3d_seeds.yaml").read_text())  # shipped
    search["base_config"] = configs / "train" / "gan3d.yaml"  # (relative to the working folder)
    search["base"].update({"max_steps": 4, "val_every": 2, "val_showers": 10, "warmup_steps": 1,
                           "val_classifier": False, "gan3d.channels": 2, "gan3d.latent": 4,
                           "gan3d.batch": 4})
    search["space"]["seed"]["choices"] = [0, 1]
    best = tune(TuneConfig(**search), str(tmp / "e-"), gpath, tmp / "seeds", trials=5)
    assert best["trials"] == 2 and best["pruned"] == 0  # the grid ends the study
    finals = {}
    for run in ("trial_0000", "trial_0001"):
        history = read_history(tmp / "seeds" / run)
        finals[run] = (history[-1]["best_generator"], history[0]["train_loss"])
    assert finals["trial_0000"][1] != finals["trial_0001"][1]  # two seeds, two trainings
    assert best["run"].name == min(finals, key=lambda r: finals[r][0])
    assert best["value"] == min(v[0] for v in finals.values())
    with pytest.raises(ValueError, match="choices"):
        TuneConfig(**{**search, "space": {"lr": {"low": 1e-4, "high": 1e-3}}})
