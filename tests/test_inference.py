"""Inference: ONNX export and ONNX Runtime against PyTorch, the onnx back-end of `generate`, the
KServe v2 server driven by the official Triton HTTP client, the Triton repository layout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import awkward as ak
import numpy as np
import pytest
import torch

from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.inference.g4hook import fast_spec
from fastshower.inference.generate import load_generator
from fastshower.inference.onnx import OnnxGenerator, export_model
from fastshower.inference.serve import client_inputs
from fastshower.models.base import noise_inputs, primaries_inputs
from fastshower.models.pretrained import pretrained
from fastshower.simhits import read_metadata, read_sample
from fastshower.simulation.gun import GunConfig, sample_primaries
from fastshower.validation.observables import high_level


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    geom = build_geometry("hgcal")
    gpath = save(geom, tmp / "g.h5")
    res = subprocess.run([sys.executable, "-m", "fastshower", "export-model", "--run",
                          str(pretrained("flowgnn")), "--out", str(tmp / "onnx"), "--triton",
                          "--geometry", str(gpath)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ONNX Runtime vs PyTorch" in " ".join(res.stdout.split())
    return geom, gpath, load_generator(pretrained("flowgnn"), geom), tmp / "onnx", tmp


def photons(n: int, energy: float, seed: int) -> dict:
    gun = GunConfig(particle="gamma", energy=[energy], eta=(1.99, 2.01), phi_deg=(89.5, 90.5))
    return sample_primaries(gun, n, np.random.default_rng(seed))


def test_onnx_runtime_gives_pytorch_showers_for_the_same_noise(exported):
    geom, _, generator, folder, _ = exported
    card = json.loads((folder / "model_card.json").read_text())
    assert card["check"]["max_relative_diff"] <= card["check"]["tolerance"]
    assert card["parameters"] == 625_859 and card["geometry_hash"] == geom.hash
    onnx = OnnxGenerator(folder, geom)
    # other conditions than the export check: both particles, 3 and 300 GeV, displaced starts
    p = photons(6, 3.0, 1)
    p.pdg[:] = [11, 22] * 3
    p.energy_mev[3:] = 300e3
    p.position_mm[:, 0] = np.linspace(-20.0, 20.0, 6)
    inputs = primaries_inputs(p, onnx.particles) | noise_inputs(6, onnx.side["program"],
                                                                np.random.default_rng(9))
    got = onnx.session.run(None, inputs)
    with torch.no_grad():
        ref = [t.numpy() for t in generator.export_module()(
            **{k: torch.from_numpy(v) for k, v in inputs.items()})]
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    assert len(got[2]) > 1000
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-4, atol=1e-3)
    # every shower's hit energies add up to its drawn layer energies: ~1 % of E at 300 GeV
    per_shower = np.bincount(got[0], got[2], 6)
    assert (per_shower[3:] / 300e3 > 0.007).all() and (per_shower[3:] / 300e3 < 0.011).all()


def test_native_generation_is_the_exported_program(exported):
    """The torch back-end runs the very program ONNX export traced: the same seed gives the
    same cells, and energies equal to float32 rounding."""
    _, _, generator, folder, _ = exported
    p = photons(40, 20.0, 3)
    native = generator.sample(p, np.random.default_rng(1))
    onnx = OnnxGenerator(folder, generator.geom).sample(p, np.random.default_rng(1))
    (_, cells_a, e_a), (_, cells_b, e_b) = native.flat(), onnx.flat()
    assert len(cells_a) > 40 * 100 and np.array_equal(cells_a, cells_b)
    np.testing.assert_allclose(e_a, e_b, rtol=1e-4, atol=1e-3)


def test_backends_refuse_the_wrong_model_kind(exported):
    geom, _, _, folder, tmp = exported
    with pytest.raises(FastShowerError, match="no network to export"):
        export_model(load_generator(pretrained("parametric"), geom), tmp / "p")
    with pytest.raises(FastShowerError, match="export it first"):
        load_generator(pretrained("flowgnn"), geom, backend="onnx")
    with pytest.raises(FastShowerError, match="use --backend onnx"):
        load_generator(folder, geom, backend="torch")
    with pytest.raises(FastShowerError, match="not an exported model"):
        load_generator(tmp, geom, backend="onnx")
    with pytest.raises(FastShowerError, match="outside the training range"):
        OnnxGenerator(folder, geom).ranges.check(photons(2, 900.0, 1))


def test_generate_cli_with_the_onnx_backend(exported):
    _, gpath, _, folder, tmp = exported
    out = tmp / "onnx.root"
    res = subprocess.run([sys.executable, "-m", "fastshower", "generate", "--run", str(folder),
                          "--backend", "onnx", "--particle", "e-", "--energy", "5:50",
                          "--spectrum", "log-uniform", "--eta", "2.0", "--n", "20",
                          "--geometry", str(gpath), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    batch = read_sample(out)[0]
    assert len(batch) == 20 and ak.all(ak.num(batch.cell_id) > 20)
    assert read_metadata(out)["generator"] == "fastshower flowgnn (onnxruntime)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported):
    _, gpath, _, folder, tmp = exported
    port = free_port()
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "fastshower", "serve", "--model", str(folder),
                             "--port", str(port), "--geometry", str(gpath), "--max-showers",
                             "16", "--max-delay-ms", "50"], stdout=log, stderr=log)
    url = f"127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp / "serve.log").read_text()
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_tritonclient_talks_to_the_server_unchanged(server, exported):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    geom, _, _, folder, _ = exported
    client = http.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fastshower")
    meta = client.get_model_metadata("fastshower")
    assert [t["name"] for t in meta["outputs"]] == ["hit_shower", "hit_cell", "hit_energy"]
    result = client.infer("fastshower", client_inputs([20e3, 50e3], 22, seed=7))
    shower, cell, energy = (result.as_numpy(k) for k in ("hit_shower", "hit_cell", "hit_energy"))
    assert result.get_response()["parameters"]["seed"] == 7
    # what ONNX Runtime gives in process for the same inputs and seed
    onnx = OnnxGenerator(folder, geom)
    p = photons(2, 20.0, 0)
    p.energy_mev[:] = [20e3, 50e3]
    p.direction[:] = [0.0, np.sin(2 * np.arctan(np.exp(-2))), np.cos(2 * np.arctan(np.exp(-2)))]
    ref = onnx.sample(p, np.random.default_rng(7)).flat()
    assert np.array_equal(shower, ref[0]) and np.array_equal(cell, ref[1])
    np.testing.assert_allclose(energy, ref[2], rtol=1e-6)
    # JSON outputs instead of binary ones: the same numbers
    as_json = client.infer("fastshower", client_inputs([20e3, 50e3], 22, seed=7),
                           outputs=[http.InferRequestedOutput("hit_energy", binary_data=False)])
    np.testing.assert_allclose(as_json.as_numpy("hit_energy"), energy, rtol=1e-6)
    for inputs, status, message in (
            (client_inputs([2e6], 22), 400, "outside the training range"),
            (client_inputs([20e3], 211), 400, "cannot generate pi+"),
            (client_inputs([20e3] * 17, 22), 400, "1 to 16 showers"),
            (client_inputs([-1.0], 22), 400, "positive")):
        with pytest.raises(InferenceServerException, match=message) as err:
            client.infer("fastshower", inputs)
        assert err.value.status() == str(status)
    with pytest.raises(InferenceServerException, match="unknown model") as err:
        client.infer("other", client_inputs([20e3], 22))
    assert err.value.status() == "404"


def test_server_batches_concurrent_requests_without_changing_them(server):
    import tritonclient.http as http

    def one(seed):
        client = http.InferenceServerClient(server)
        r = client.infer("fastshower", client_inputs([10e3], 11, seed=seed))
        return (r.as_numpy("hit_cell"), r.as_numpy("hit_energy"),
                r.get_response()["parameters"]["batch_showers"])

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    alone = [one(seed) for seed in range(8)]
    assert max(b for *_, b in together) > 1  # some requests shared a model call
    assert all(b == 1 for *_, b in alone)
    for (cells, energy, _), (cells1, energy1, _) in zip(together, alone, strict=True):
        # a request's showers do not depend on batching (up to float32 rounding)
        np.testing.assert_array_equal(cells, cells1)
        np.testing.assert_allclose(energy, energy1, rtol=1e-5)


def _request(**inputs) -> bytes:
    """A KServe v2 JSON request; inputs: name -> (datatype, shape, data)."""
    return json.dumps({"inputs": [{"name": k, "datatype": t, "shape": shape, "data": data}
                                  for k, (t, shape, data) in inputs.items()]}).encode()


UP = [0.0, 0.2649, 0.9643]  # eta 2, phi 90 deg: into the default region
GOOD = {"energy": ("FP32", [1], [20e3]), "direction": ("FP32", [1, 3], UP),
        "pdg": ("INT32", [1], [22])}


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b'{"inputs": 3}', "'inputs' list"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (_request(energy=("FP32", [2], [1.0])), "do not match shape"),
    (_request(**{**GOOD, "energy": ("FP32", [1], ["NaN"])}), "finite"),
    (_request(**{**GOOD, "energy": ("FP32", [1], ["inf"])}), "finite"),
    (_request(**{**GOOD, "direction": ("FP32", [1, 3], [0, 0, 0])}), "zero"),
    (_request(**{**GOOD, "direction": ("FP32", [1, 3], [0, 0, float("nan")])}), "finite"),
    (_request(**{**GOOD, "direction": ("FP32", [2, 3], UP * 2)}), "shape"),
    (_request(**{**GOOD, "position": ("FP32", [1, 3], [1e30, 0, 0])}), "miss the calorimeter"),
    (_request(**{**GOOD, "direction": ("FP32", [1, 3], [0, -0.2649, -0.9643])}),
     "miss the calorimeter"),
    (_request(**{**GOOD, "energy": ("FP32", [1], [0.0])}), "positive"),
])
def test_malformed_requests_get_a_clear_400(server, body, message):
    url = f"http://{server}/v2/models/fastshower/infer"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"))
    assert err.value.code == 400
    assert message in json.loads(err.value.read())["error"]


def test_a_good_json_request_is_served(server):
    url = f"http://{server}/v2/models/fastshower/infer"
    with urllib.request.urlopen(urllib.request.Request(url, data=_request(**GOOD),
                                                       method="POST")) as r:
        out = {t["name"]: t["data"] for t in json.loads(r.read())["outputs"]}
    assert len(out["hit_cell"]) > 20 and sum(out["hit_energy"]) > 0


def test_triton_repository_has_a_valid_model_config(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    _, _, _, folder, _ = exported
    repo = folder / "triton_repository" / "fastshower"
    config = text_format.Parse((repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert [i.name for i in config.input] == ["energy", "position", "direction", "particle", "z",
                                              "gumbel", "normal"]
    assert list(config.input[5].dims) == [-1, 47, 639]
    assert (repo / "1" / "model.onnx").stat().st_size == (folder / "model.onnx").stat().st_size


def test_hybrid_geant4_run_hands_calorimeter_showers_to_the_model(exported):
    """Photons from the interaction point through 0.3 X0 of silicon: what reaches the calorimeter
    above 1 GeV is stopped at its front and generated (PyTorch and ONNX back-ends); the merged
    hits respond like full Geant4's; a threshold above the beam energy hands nothing over; the
    model takes only the particles it is told to."""
    from fastshower.simulation.jobs import simulate

    geom, gpath, _, folder, tmp = exported
    gun = GunConfig(particle="gamma", energy=[20.0], eta=(1.995, 2.005), phi_deg=(89.9, 90.1))
    fast = fast_spec(pretrained("flowgnn"))
    runs = {"full": None, "torch": fast, "onnx": {**fast, "model": str(folder), "backend": "onnx"},
            "pairs only": {**fast, "particles": ["e-"]},
            "none": {**fast, "min_energy_gev": 50.0}}
    response, handed = {}, {}
    for name, cfg in runs.items():
        folder = tmp / f"hybrid_{name}"
        simulate(gpath, gun, 8, folder, seed=3, upstream_x0=0.3, fast=cfg, show_progress=False)
        batch, meta = read_sample(folder)
        response[name] = high_level(batch, geom)["response"].mean()
        handed[name] = json.loads((folder / "logs" / "job_000.json").read_text())
        assert meta["upstream_x0"] == 0.3 and len(batch) == 8
        assert np.all(batch.primaries.energy_mev == 20e3)  # the gun's primaries
    assert meta["fast_simulation"]["min_energy_gev"] == 50.0
    for name in ("torch", "onnx"):
        # every photon, or the pair it converted into, reaches the calorimeter
        assert handed[name]["fast_showers"] >= 8
        assert handed[name]["fast_energy_mev"] > 0.95 * 8 * 20e3
        assert abs(response[name] / response["full"] - 1) < 0.06, response
    assert handed["none"]["fast_showers"] == 0
    # photons that did not convert in the silicon are left to Geant4
    assert 0 < handed["pairs only"]["fast_showers"] < handed["torch"]["fast_showers"]
    assert abs(response["none"] / response["full"] - 1) < 0.06, response


def test_merge_hits_sums_per_event_and_cell_keeping_the_earliest_time():
    from fastshower.simulation.scoring import merge_hits

    counts, cell, energy, time = merge_hits(
        np.array([1, 0, 1, 1, 3]), np.array([5, 2, 5, 4, 2]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        np.array([9.0, 1.0, 7.0, 2.0, 3.0]), 4)
    assert counts.tolist() == [1, 2, 0, 1]
    assert cell.tolist() == [2, 4, 5, 2] and energy.tolist() == [2.0, 4.0, 4.0, 5.0]
    assert time.tolist() == [1.0, 2.0, 7.0, 3.0]
