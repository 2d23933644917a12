"""Simulation pieces that need no Geant4 run: gun sampling, scoring, synthetic EM tables."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fastshower.geometry import build_geometry
from fastshower.simulation.g4data import (
    ALPHA,
    KAPPA,
    LOG_T,
    RE2_MB,
    brem_table,
    chi_screened,
    coulomb_correction,
)
from fastshower.simulation.gun import GunConfig, sample_primaries
from fastshower.simulation.scoring import aggregate_steps


def test_gun_is_seeded_and_samples_its_spectrum():
    cfg = GunConfig(particle="gamma", energy=[1.0, 500.0], spectrum="log-uniform",
                    eta=(1.9, 2.1), phi_deg=(80, 100))
    a = sample_primaries(cfg, 5000, np.random.default_rng(3))
    b = sample_primaries(cfg, 5000, np.random.default_rng(3))
    assert all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("pdg", "energy_mev", "position_mm", "direction"))
    e = a.energy_mev
    assert e.min() >= 1000 and e.max() <= 500_000
    assert np.median(np.log(e)) == pytest.approx(np.log(np.sqrt(1000 * 500_000)), abs=0.1)
    d = a.direction
    assert np.allclose(np.linalg.norm(d, axis=1), 1)
    eta = np.arctanh(d[:, 2])
    assert eta.min() >= 1.9 - 1e-9 and eta.max() <= 2.1 + 1e-9
    assert np.all(a.pdg == 22)


def test_gun_at_an_incidence_angle_hits_the_aim_point():
    cfg = GunConfig(energy=[10.0, 510.0], spectrum="uniform", theta_deg=(0.0, 30.0),
                    phi_deg=(0.0, 360.0), aim_mm=(0.0, 0.0, 1500.0))
    a = sample_primaries(cfg, 4000, np.random.default_rng(5))
    theta = np.degrees(np.arccos(a.direction[:, 2]))
    assert theta.min() >= 0 and theta.max() <= 30 + 1e-9
    assert np.mean(theta) == pytest.approx(15, abs=0.5)  # uniform in the angle
    # every line passes through the aim point, 100 mm after its vertex
    assert np.allclose(a.position_mm + 100.0 * a.direction, [0.0, 0.0, 1500.0])
    geom = build_geometry("grid", neighbours=False)
    assert (geom.entry_cells(a.position_mm, a.direction) >= 0).all()


@pytest.mark.parametrize("bad, match", [
    ({"particle": "kaon"}, "unknown particle"),
    ({"theta_deg": (10.0, 95.0)}, "within 0 to 90"),
    ({"theta_deg": (0.0, 30.0), "direction": (0.0, 0.0, 1.0)}, "not both"),
    ({"energy": [-1.0]}, "positive"),
    ({"energy": [50.0, 10.0], "spectrum": "uniform"}, "reversed"),
    ({"energy": [10.0], "spectrum": "uniform"}, "two energies"),
])
def test_gun_rejects_bad_input(bad, match):
    with pytest.raises(ValidationError, match=match):
        GunConfig(**bad)


def test_steps_are_summed_per_cell_with_first_time_and_lost_energy():
    geom = build_geometry("grid", neighbours=False)
    size = 5.1
    layer = np.array([0, 0, 0, 1, 0])
    x = np.array([0.1, 1.0, 2.0 * size, 0.0, 1e4])
    y = np.zeros(5)
    t = np.array([5.0, 3.0, 4.0, 6.0, 1.0])
    e = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    ids, energy, time, lost = aggregate_steps(geom, layer, x, y, t, e)
    expect = geom.lookup(layer[:4], x[:4], y[:4])
    assert len(ids) == 3 and set(ids) == set(expect)
    by_id = dict(zip(ids.tolist(), zip(energy.tolist(), time.tolist(), strict=True),
                     strict=True))
    assert by_id[expect[0]] == (3.0, 3.0)
    assert by_id[expect[2]] == (4.0, 4.0)
    assert by_id[expect[3]] == (8.0, 6.0)
    assert lost == 16.0


@pytest.mark.parametrize("z", [1, 14, 29, 74, 82])
def test_brem_tables_are_positive_and_never_rise_with_kappa(z):
    chi = brem_table(z)
    assert chi.shape == (len(LOG_T), len(KAPPA))
    assert np.all(np.isfinite(chi)) and np.all(chi > 0)
    assert np.all(np.diff(chi, axis=1) <= 1e-12)


def test_brem_high_energy_limit_is_tsai_complete_screening():
    z = 82
    t = np.array([1e4])  # 10 GeV, soft photon: complete screening
    chi = chi_screened(z, np.array([1e-6]), t, np.array([1.0]))[0]
    lrad, lprad = np.log(184.15 / z ** (1 / 3)), np.log(1194 / z ** (2 / 3))
    tsai = 16 / 3 * ALPHA * RE2_MB * (lrad - coulomb_correction(z) + lprad / z
                                      + (1 + 1 / z) / 12)
    assert chi == pytest.approx(tsai, rel=0.01)
