"""The generator contract: a generator defined here, outside the package, plugs in through the
registry and runs through train, generate, validate, export-model and serve with nothing else
edited."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from fastshower import cli
from fastshower.geometry import Geometry, build_geometry, save
from fastshower.geometry.showers import layer_z, line_at
from fastshower.models.base import HIT_OUTPUTS, ShowerGenerator, TrainingRanges, generator_class
from fastshower.models.showers import layer_summary
from fastshower.simhits import Primaries, ShowerBatch, read_metadata, read_sample
from fastshower.simulation.gun import GunConfig
from fastshower.simulation.jobs import simulate

LAYERS = 12


class AxisCells(nn.Module):
    """One hit per layer in the cell nearest to the shower axis, energy = E x fraction x
    exp(0.1 z): the generation program of Blob, in torch so that ONNX export can trace it."""

    def __init__(self, geom: Geometry, fractions: np.ndarray):
        super().__init__()
        layer = geom.cells["layer"]
        ids = [np.flatnonzero(layer == k) for k in range(LAYERS)]
        width = max(len(i) for i in ids)
        cell = np.full((LAYERS, width), -1)
        for k, i in enumerate(ids):
            cell[k, :len(i)] = i
        far = np.where(cell >= 0, 0.0, 1e9)
        self.register_buffer("cell", torch.from_numpy(cell))
        self.register_buffer("x", torch.from_numpy(geom.cells["x"][cell] + far).float())
        self.register_buffer("y", torch.from_numpy(geom.cells["y"][cell] + far).float())
        self.register_buffer("z", torch.from_numpy(layer_z(geom)[:LAYERS]).float())
        self.register_buffer("fractions", torch.from_numpy(fractions).float())
        self.noise = {"z": ("normal", (1,))}
        self.output_names = HIT_OUTPUTS

    def forward(self, energy, position, direction, particle, z):
        ax, ay = line_at(self.z[None, :], *position[:, :, None].unbind(1),
                         *direction[:, :, None].unbind(1))  # (P, L)
        d2 = (self.x[None] - ax[..., None]) ** 2 + (self.y[None] - ay[..., None]) ** 2
        cell = self.cell[torch.arange(LAYERS)[None, :], d2.argmin(-1)]  # (P, L)
        e = energy[:, None] * self.fractions[None] * torch.exp(0.1 * z)
        shower = torch.arange(energy.shape[0])[:, None].expand(-1, LAYERS)
        return shower.reshape(-1), cell.reshape(-1), e.reshape(-1)


class Blob(ShowerGenerator):
    """The smallest honest generator: mean layer energy fractions fitted to Geant4."""

    name = "test-blob"
    training = "fit"

    def __init__(self, geom: Geometry, fractions, ranges: TrainingRanges, particles):
        self.geom, self.ranges, self.particles = geom, ranges, list(particles)
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.program = AxisCells(geom, self.fractions)

    @classmethod
    def fit(cls, train: ShowerBatch, geom: Geometry, config, seed: int) -> Blob:
        e_layer, _ = layer_summary(train, geom)
        fractions = (e_layer[:, :LAYERS] / train.primaries.energy_mev[:, None]).mean(0)
        return cls(geom, fractions, TrainingRanges.of(train.primaries), ["gamma"])

    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        return self.sample_program(primaries, rng)

    def export_module(self) -> nn.Module:
        return self.program

    def state(self) -> dict:
        return {"fractions": self.fractions.tolist(), "ranges": self.ranges.to_dict(),
                "particles": self.particles}

    @classmethod
    def from_state(cls, state: dict, geom: Geometry) -> Blob:
        return cls(geom, state["fractions"], TrainingRanges.from_dict(state["ranges"]),
                   state["particles"])


def fastshower_in_process(*args) -> str:
    """The CLI run in this process (where Blob is registered); its output."""
    sys.argv = ["fastshower", *map(str, args)]
    try:
        cli.main()
    except SystemExit as done:
        assert done.code in (0, None), done.code
    return ""


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    gpath = save(build_geometry("hgcal"), tmp / "g.h5")
    gun = GunConfig(particle="gamma", energy=[5.0, 20.0], spectrum="log-uniform",
                    eta=(1.99, 2.01), phi_deg=(89.5, 90.5))
    simulate(gpath, gun, 60, tmp / "g4", jobs=2, seed=5, show_progress=False)
    return tmp, gpath


def test_a_generator_defined_outside_the_package_runs_through_every_command(sample, capsys):
    tmp, gpath = sample
    assert generator_class("test-blob") is Blob
    fastshower_in_process("train", "--model", "test-blob", "--data", tmp / "g4",
                          "--geometry", gpath, "--out", tmp / "run")
    assert json.loads((tmp / "run" / "history.jsonl").read_text().splitlines()[0])["step"] == 1
    fastshower_in_process("generate", "--run", tmp / "run", "--geometry", gpath, "--particle",
                          "gamma", "--energy", "6:18", "--eta", "2.0", "--n", "30", "--out",
                          tmp / "blob.root")
    showers, meta = read_sample(tmp / "blob.root")
    assert meta["generator"] == "fastshower test-blob" and len(showers) == 30
    assert np.all(np.diff(showers.cell_id.layout.offsets) <= LAYERS)
    fastshower_in_process("validate", "--reference", tmp / "g4", "--generated",
                          tmp / "blob.root", "--geometry", gpath, "--out", tmp / "val")
    assert "classifier" in json.loads((tmp / "val" / "metrics.json").read_text())["generated"]
    fastshower_in_process("export-model", "--run", tmp / "run", "--geometry", gpath, "--out",
                          tmp / "onnx")
    assert json.loads((tmp / "onnx" / "model.json").read_text())["model"] == "test-blob"
    capsys.readouterr()

    # the ONNX Runtime back-end gives the showers the torch one gives for the same seed
    fastshower_in_process("generate", "--backend", "onnx", "--run", tmp / "onnx", "--geometry",
                          gpath, "--particle", "gamma", "--energy", "6:18", "--eta", "2.0",
                          "--n", "30", "--out", tmp / "blob_onnx.root")
    a, b = read_sample(tmp / "blob.root")[0], read_sample(tmp / "blob_onnx.root")[0]
    assert np.array_equal(a.flat()[1], b.flat()[1])
    np.testing.assert_allclose(a.flat()[2], b.flat()[2], rtol=1e-5)
    assert read_metadata(tmp / "blob_onnx.root")["generator"].endswith("(onnxruntime)")

    # and the export serves over HTTP (a fresh process: it needs no Blob class)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fastshower", "serve", "--model",
                             tmp / "onnx", "--geometry", gpath, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"inputs": [
            {"name": "energy", "datatype": "FP32", "shape": [2], "data": [8e3, 15e3]},
            {"name": "direction", "datatype": "FP32", "shape": [2, 3],
             "data": [0.0, 0.2649, 0.9643] * 2},
            {"name": "pdg", "datatype": "INT32", "shape": [2], "data": [22, 22]}]}).encode()
        url = f"http://127.0.0.1:{port}/v2/models/fastshower/infer"
        for _ in range(120):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body,
                                                                   method="POST")) as r:
                    out = {t["name"]: t["data"] for t in json.loads(r.read())["outputs"]}
                break
            except OSError:
                assert proc.poll() is None
                time.sleep(0.5)
        assert len(out["hit_cell"]) == 2 * LAYERS and min(out["hit_energy"]) > 0
    finally:
        proc.terminate()
        proc.wait(10)
