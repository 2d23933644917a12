"""Energy regression: the GNN and its baselines on a small real Geant4 photon sample, run folders,
`fastshower regress train|evaluate`, and its use in the validation report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from fastshower.data.cache import preprocess, read_split
from fastshower.data.graphs import to_batch
from fastshower.data.transform import TransformConfig
from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.models.regression import EnergyGNN, RegressionConfig, em_layers, high_level
from fastshower.simhits import read_sample
from fastshower.simulation.gun import GunConfig
from fastshower.simulation.jobs import simulate
from fastshower.training.regress import (
    RegressionRun,
    evaluate,
    read_cache_split,
    read_held_out,
    regress_showers,
)
from fastshower.validation.report import validate


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """150 photons of 5-50 GeV at eta 2 in the default geometry, as a graph cache."""
    tmp = tmp_path_factory.mktemp("regression")
    geom = build_geometry("hgcal")
    gpath = save(geom, tmp / "g.h5")
    simulate(gpath, GunConfig(particle="gamma", energy=[5.0, 50.0], spectrum="uniform",
                              eta=(1.99, 2.01), phi_deg=(89.5, 90.5)),
             150, tmp / "gamma", jobs=2, seed=31, show_progress=False)
    folder = preprocess(tmp / "gamma", gpath, tmp / "cache", workers=2, show_progress=False)
    return geom, gpath, folder, tmp


def test_high_level_variables_are_the_section_sums_and_the_shower_direction(cache):
    geom, _, folder, _ = cache
    raw = to_batch(read_split(folder, "test"))
    hl = high_level(raw.x, raw.batch, raw.num_graphs, em_layers(geom))
    total = torch.zeros(raw.num_graphs).index_add_(0, raw.batch, raw.x[:, 0]) / 1e3
    torch.testing.assert_close(hl[:, 0] + hl[:, 1], total)
    assert (hl[:, 0] > 5 * hl[:, 1]).all()  # photons deposit mostly in the EM section
    assert torch.allclose(hl[:, 2], torch.full_like(hl[:, 2], 2.0), atol=0.05)  # eta
    assert torch.allclose(hl[:, 3], torch.full_like(hl[:, 3], np.pi / 2), atol=0.05)  # phi


def test_every_message_passing_variant_runs(cache):
    geom, _, folder, _ = cache
    graphs, _ = read_cache_split(folder, "val", geom)
    b = Batch.from_data_list(graphs[:8])
    for conv in ("gcn", "edge", "gravnet"):
        model = EnergyGNN(b.x.shape[1], RegressionConfig(conv=conv, high_level=True, hidden=16))
        out = model(b.x, b.edge_index, b.batch, b.num_graphs, b.e_hit, b.hl)
        assert out.shape == (8,) and torch.isfinite(out).all()


def test_regress_train_evaluate_and_validation_use(cache):
    geom, gpath, folder, tmp = cache
    train = [sys.executable, "-m", "fastshower", "regress", "train", "--cache", str(folder),
             "--geometry", str(gpath), "--set", "max_epochs=40", "--set", "hidden=32"]
    runs = []
    for name, extra in (("gnn", []), ("gnn_hl", ["--set", "high_level=true"])):
        res = subprocess.run([*train, *extra, "--out", str(tmp / name)], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        runs.append(str(tmp / name))
    history = [json.loads(line) for line in (tmp / "gnn" / "history.jsonl").read_text()
               .splitlines()]
    assert history[-1]["best_val_loss"] < history[0]["val_loss"]
    again = subprocess.run([*train, "--out", runs[0]], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stdout  # a finished run stays finished
    res = subprocess.run([sys.executable, "-m", "fastshower", "regress", "evaluate", "--runs",
                          ",".join(runs), "--cache", str(folder), "--geometry", str(gpath),
                          "--out", str(tmp / "eval")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((tmp / "eval" / "regression.json").read_text())["methods"]
    assert set(result) == {"linear energy sum", "DNN (high-level only)", "GNN gcn",
                           "GNN gcn + high-level"}
    linear = result["linear energy sum"]
    assert abs(linear["response"] - 1) < 0.03 and 0.01 < linear["resolution"] < 0.1
    for name, r in result.items():  # every method measures these photons' energy to 15 %
        assert abs(r["response"] - 1) < 0.15 and r["mean_relative_error"] < 0.15, (name, r)
    assert (tmp / "eval" / "regression.png").stat().st_size > 20000
    # on every shower of another cache (here the same photons split otherwise: its own scaler)
    other = preprocess(tmp / "gamma", gpath, tmp / "cache_other", fractions=(0.5, 0.25, 0.25),
                       show_progress=False)
    held = evaluate(runs, folder, gpath, tmp / "eval_held", held_out=other)
    assert held["n_test"] == 150 and held["held_out"] == str(other)
    for name, r in held["methods"].items():
        assert abs(r["response"] - 1) < 0.15 and r["mean_relative_error"] < 0.15, (name, r)
    # in the validation report: the same Geant4 sample on both sides gives the same numbers
    m = validate(tmp / "gamma", tmp / "gamma", gpath, tmp / "val",
                 regressor=RegressionRun(runs[0], geom))
    r = m["regression"]
    assert r["reference"]["response"] == pytest.approx(r["generated"]["response"])
    assert abs(r["reference"]["response"] - 1) < 0.15
    assert "Energy regression" in (tmp / "val" / "report.html").read_text()
    pred = regress_showers(runs[0], read_sample(tmp / "gamma")[0], geom)
    assert pred.shape == (150,) and np.all(pred > 0)


def test_regression_refuses_what_it_cannot_use(cache):
    geom, gpath, folder, tmp = cache
    with pytest.raises(FastShowerError, match="not a graph cache"):
        read_cache_split(tmp / "gamma", "train", geom)
    other = preprocess(tmp / "gamma", gpath, tmp / "cache_1mip",
                       TransformConfig(threshold_mip=1.0), show_progress=False)
    with pytest.raises(FastShowerError, match="same options"):
        read_held_out(other, folder, geom)
    res = subprocess.run([sys.executable, "-m", "fastshower", "regress", "train", "--cache",
                          str(tmp), "--out", str(tmp / "x"), "--geometry", str(gpath), "--set",
                          "conv=transformer"], capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "bad regression config" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_regression_trains_data_parallel_under_torchrun(cache):
    _, gpath, folder, tmp = cache
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "fastshower", "regress", "train",
                          "--cache", str(folder), "--geometry", str(gpath), "--set",
                          "max_epochs=3", "--set", "hidden=16", "--out", str(tmp / "ddp")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    history = [json.loads(line) for line in (tmp / "ddp" / "history.jsonl").read_text()
               .splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]  # rank 0 alone logs
    assert all(r["world_size"] == 2 for r in history)
    assert (tmp / "ddp" / "model.pt").is_file()
