"""Scale-out of simulation and preprocessing on a Dask cluster (a local one here): the same
files as local processes, idempotent jobs, clear errors."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest

from fastshower.data.cache import preprocess
from fastshower.data.transform import GraphChunk
from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.simhits import read_sample
from fastshower.simulation.gun import GunConfig
from fastshower.simulation.jobs import simulate

GUN = GunConfig(particle="e-", energy=[3.0], eta=(1.99, 2.01), phi_deg=(89.5, 90.5))


@pytest.fixture(scope="module")
def productions(tmp_path_factory):
    """The same production (2 jobs x 3 showers) with local processes and on Dask."""
    tmp = tmp_path_factory.mktemp("scaleout")
    gpath = save(build_geometry("hgcal"), tmp / "g.h5")
    local = simulate(gpath, GUN, 6, tmp / "local", jobs=2, seed=4, show_progress=False)
    dask = simulate(gpath, GUN, 6, tmp / "dask", jobs=2, seed=4, show_progress=False,
                    scheduler="local")
    return gpath, tmp, local, dask


def test_simulation_on_dask_writes_the_same_files_as_local_processes(productions):
    _, tmp, local, dask = productions
    assert [p.name for p in dask] == ["job_000.root", "job_001.root"]
    for a, b in zip(local, dask, strict=True):
        ba, bb = read_sample(a)[0], read_sample(b)[0]
        assert len(bb) == 3
        assert ak.all(ba.cell_id == bb.cell_id)
        assert ak.all(ba.cell_energy == bb.cell_energy)
    timing = json.loads((tmp / "dask" / "logs" / "job_001.json").read_text())
    assert timing["n"] == 3 and timing["cpu_seconds"] > 0
    assert not list((tmp / "dask").glob("*.tmp")) and not list((tmp / "dask").glob("logs/*result*"))


def test_dask_jobs_are_idempotent_and_resume(productions):
    gpath, tmp, _, dask = productions
    before = [p.stat().st_mtime_ns for p in dask]
    dask[1].unlink()  # a lost file: only that job runs again
    again = simulate(gpath, GUN, 6, tmp / "dask", jobs=2, seed=4, show_progress=False,
                     scheduler="local")
    assert again[0].stat().st_mtime_ns == before[0] and again[1].is_file()


def test_preprocessing_on_dask_gives_the_same_cache(productions):
    gpath, tmp, _, dask = productions
    folders = [preprocess(tmp / "dask", gpath, tmp / name, chunk=2, show_progress=False,
                          scheduler=scheduler)
               for name, scheduler in (("cache_local", None), ("cache_dask", "local"))]
    a, b = (json.loads((f / "manifest.json").read_text()) for f in folders)
    assert a["counts"] == b["counts"] and a["scaler"] == b["scaler"]
    shards = sorted(folders[0].glob("shard_*.npz"))
    assert shards
    for shard in shards:
        nodes = np.load(folders[0] / "nodes.npy")
        ga, gb = GraphChunk.load(shard, nodes), GraphChunk.load(folders[1] / shard.name, nodes)
        assert len(ga) > 0 and len(ga) == len(gb)
        assert np.array_equal(ga.x, gb.x) and np.array_equal(ga.edge_index, gb.edge_index)


def test_an_unreachable_scheduler_is_a_clear_error(productions):
    gpath, tmp, _, _ = productions
    with pytest.raises(FastShowerError, match="cannot reach the Dask scheduler"):
        simulate(gpath, GUN, 2, tmp / "nowhere", jobs=1, seed=1, show_progress=False,
                 scheduler="tcp://127.0.0.1:1")
    assert np.all([not p.name.endswith(".root") for p in (tmp / "nowhere").glob("*")])
