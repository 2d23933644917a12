"""Data pipeline: sim hits -> graphs (vectorised), cache shards, batches; bad input."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from fastshower.data.cache import batches, preprocess, read_split
from fastshower.data.graphs import Scaler, to_batch, to_data_list
from fastshower.data.transform import (
    GraphChunk,
    TransformConfig,
    node_table,
    select_hits,
    to_chunk,
)
from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.simhits import ShowerBatch, SimHitWriter, read_sample
from fastshower.simulation.gun import GunConfig
from fastshower.simulation.jobs import simulate


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    geom = build_geometry("hgcal")
    gpath = save(geom, tmp / "g.h5")
    simulate(gpath, GunConfig(particle="gamma", energy=[2.0, 8.0], spectrum="uniform"), 60,
             tmp / "sim", jobs=2, seed=3, show_progress=False)
    return geom, gpath, tmp


def test_graphs_match_a_per_hit_reading_of_the_showers(sample):
    geom, _, tmp = sample
    batch, _ = read_sample(tmp / "sim")
    cfg = TransformConfig(threshold_mip=0.5)
    graphs = to_data_list(to_chunk(batch, geom, cfg))
    assert len(graphs) == len(batch)
    for i in range(3):  # per-hit check, written the slow obvious way for three showers
        ids = ak.to_numpy(batch.cell_id[i]).astype(int)
        e = ak.to_numpy(batch.cell_energy[i]).astype(float)
        thr = 0.5 * 0.1 * 1.664 * 2.33 * geom.cells["thickness"][ids]
        thr = np.where(geom.cells["type"][ids] == 0, thr,
                       0.5 * 0.1 * 1.936 * 1.06 * geom.cells["thickness"][ids])
        keep = e > thr
        g = graphs[i]
        assert g.cell_id.tolist() == sorted(ids[keep].tolist())
        assert np.allclose(g.x[:, 0].numpy(), e[keep][np.argsort(ids[keep])], rtol=1e-6)
        # every edge is a geometry edge between two hit cells, and all of them are there
        cells = g.cell_id.numpy()
        pairs = {(a, b) for a, b in zip(*geom.edges.tolist(), strict=True)
                 if a in set(cells) and b in set(cells)}
        got = {(cells[a], cells[b]) for a, b in g.edge_index.t().tolist()}
        assert got == pairs and len(pairs) > 0
    cond = graphs[0].cond[0]
    assert float(cond[1]) == pytest.approx(2.0, abs=1e-4) and int(cond[3]) == 22
    assert np.log(2.0) <= float(cond[0]) <= np.log(8.0)


def test_max_hits_keeps_the_most_energetic(sample):
    geom, _, tmp = sample
    batch, _ = read_sample(tmp / "sim")
    event, ids, energy = select_hits(batch, geom, TransformConfig(max_hits=10))
    assert np.bincount(event).max() == 10
    full_event, _, full_energy = select_hits(batch, geom, TransformConfig())
    for i in range(3):
        assert np.sort(energy[event == i]).tolist() == np.sort(full_energy[full_event == i])[
            -10:].tolist()


def test_cache_splits_batches_and_scaler(sample, tmp_path):
    geom, gpath, tmp = sample
    folder = preprocess(tmp / "sim", gpath, tmp_path / "cache", chunk=7,
                        show_progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 48, "val": 6, "test": 6}
    assert manifest["geometry_hash"] == geom.hash
    again = preprocess(tmp / "sim", gpath, tmp_path / "cache", chunk=7,
                       show_progress=False)
    assert again == folder  # found in the cache
    files = ",".join(str(f) for f in sorted((tmp / "sim").glob("*.root")))
    assert preprocess(files, gpath, tmp_path / "cache", chunk=7, show_progress=False) == folder
    two = preprocess(tmp / "sim", gpath, tmp_path / "cache2", chunk=7,
                     workers=2, show_progress=False)
    first = [b.x for b in batches(folder, "train", batch_size=16)]
    second = [b.x for b in batches(two, "train", batch_size=16)]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    xs = torch.cat(first)
    assert abs(float(xs[:, 1:4].mean())) < 0.5
    assert float(xs[:, 0].std()) == pytest.approx(1, abs=0.1)
    shuffled = [b.cell_id for b in batches(folder, "train", batch_size=16, shuffle=True, seed=1)]
    again = [b.cell_id for b in batches(folder, "train", batch_size=16, shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(shuffled, again, strict=True))
    other = [b.cell_id for b in batches(folder, "train", batch_size=16, shuffle=True, seed=2)]
    assert not all(torch.equal(a, b) for a, b in zip(shuffled, other, strict=True))
    scaler = Scaler.from_dict(manifest["scaler"])
    raw = read_split(folder, "train")
    assert len(raw) == 48
    back = scaler.inverse_energy(torch.from_numpy(scaler.features(raw.x)[:, 0]))
    assert torch.allclose(back, torch.from_numpy(raw.x[:, 0]), rtol=1e-4)
    # every training shower exactly once per epoch, whatever the order and the worker count
    def showers(loader):
        return sorted(tuple(b.cell_id[b.ptr[i]:b.ptr[i + 1]].tolist())
                      for b in loader for i in range(b.num_graphs))
    expected = showers([to_batch(raw)])
    assert showers(batches(folder, "train", batch_size=5, shuffle=True, seed=3)) == expected
    assert showers(batches(folder, "train", batch_size=5, workers=2)) == expected


def test_batches_equal_torch_geometric_collation(sample, tmp_path):
    geom, _, tmp = sample
    batch, _ = read_sample(tmp / "sim")
    chunk = to_chunk(batch, geom, TransformConfig())
    scaler = Scaler(np.ones(7), np.full(7, 2.0), np.zeros(4), np.ones(4))
    pick = np.array([5, 0, 17, 3, 3])
    ours = to_batch(chunk.select(pick), scaler)
    theirs = Batch.from_data_list([to_data_list(chunk, scaler)[i] for i in pick])
    for key in ("x", "edge_index", "cond", "cell_id", "batch", "ptr"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours.num_graphs == 5 and ours.edge_index.shape[1] > 0
    for a, b in zip(ours.to_data_list(), theirs.to_data_list(), strict=True):  # slicing info
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
    again = GraphChunk.concatenate([chunk.select(np.arange(0, 10)),
                                    chunk.select(np.arange(10, len(chunk)))])
    chunk.save(tmp_path / "shard.npz")
    loaded = GraphChunk.load(tmp_path / "shard.npz", node_table(geom))
    assert loaded.edge_index.dtype == np.uint16  # small showers: half the bytes
    for other in (again, loaded):
        assert all(np.array_equal(getattr(other, k), getattr(chunk, k))
                   for k in ("x", "cell_id", "edge_index", "node_ptr", "edge_ptr", "cond"))


def test_bad_input_names_the_file_and_shower(sample, tmp_path):
    geom, gpath, tmp = sample
    batch, meta = read_sample(tmp / "sim")
    bad = ShowerBatch(batch.primaries, batch.cell_id, batch.cell_energy * -1.0, batch.cell_time,
                      batch.lost_energy)
    w = SimHitWriter(tmp_path / "neg.root", meta)
    w.write(bad)
    w.close()
    with pytest.raises(FastShowerError, match="neg.root.*shower 0.*negative"):
        preprocess(tmp_path / "neg.root", gpath, tmp_path / "c", show_progress=False)
    with pytest.raises(FastShowerError, match="neg.root.*shower 0.*negative"):  # from a worker
        preprocess(tmp_path / "neg.root", gpath, tmp_path / "c", workers=2, show_progress=False)
    sign = np.ones(len(batch))
    sign[[2, 5]] = -1.0  # two bad showers: with bad_showers='skip' they are left out, counted
    w = SimHitWriter(tmp_path / "two_bad.root", meta)
    w.write(ShowerBatch(batch.primaries, batch.cell_id, batch.cell_energy * sign,
                        batch.cell_time, batch.lost_energy))
    w.close()
    folder = preprocess(tmp_path / "two_bad.root", gpath, tmp_path / "c",
                        TransformConfig(bad_showers="skip"), show_progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["skipped_showers"] == 2 and sum(manifest["counts"].values()) == len(batch) - 2
    kept = read_split(folder, "train").cond[:, 0]
    log_e = np.log(batch.primaries.energy_mev / 1e3)
    gap = np.abs(kept[None, :] - log_e[:, None]).min(1)  # to the nearest kept shower
    assert gap[2] > 1e-4 and gap[5] > 1e-4 and gap[0] < 1e-6 and gap[47] < 1e-6
    data = sorted((tmp / "sim").glob("*.root"))[0].read_bytes()
    (tmp_path / "cut.root").write_bytes(data[: len(data) // 2])
    with pytest.raises(FastShowerError, match="cut.root"):
        preprocess(tmp_path / "cut.root", gpath, tmp_path / "c", show_progress=False)
    other = save(build_geometry("hgcal", {"roi_radius": 100.0}), tmp_path / "other.h5")
    with pytest.raises(FastShowerError, match="geometry"):
        preprocess(tmp / "sim", other, tmp_path / "c", show_progress=False)


def test_sigterm_stops_preprocessing_without_leaking_workers(sample, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _, gpath, tmp = sample
    proc = subprocess.Popen([sys.executable, "-m", "fastshower", "preprocess", "--input",
                             str(tmp / "sim"), "--geometry", str(gpath), "--out",
                             str(tmp_path / "c"), "--workers", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    children: list[str] = []
    while len(children) < 3 and time.monotonic() < deadline:  # main + two spawned workers
        time.sleep(0.1)
        children = subprocess.run(["pgrep", "-g", str(os.getpgid(proc.pid))],
                                  capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(1.0)
    alive = subprocess.run(["pgrep", "-a", "-g", str(proc.pid)], capture_output=True,
                           text=True).stdout.splitlines()
    assert len(children) >= 3  # the main process and its workers were running
    running = [p for p in alive if "<defunct>" not in p]  # exited, awaiting its reaper
    assert running == []  # nothing of that process group is left running
    assert not list((tmp_path / "c").glob("*/manifest.json"))  # no cache that looks complete
