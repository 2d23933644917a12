"""`fastshower serve`: an exported generator behind the KServe v2 inference protocol over HTTP,
the protocol NVIDIA Triton speaks, so Triton's own clients (``tritonclient.http``) work unchanged.

Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/{m}, /v2/models/{m}/ready
(also under /versions/{v}), POST /v2/models/{m}/infer, with JSON tensors or the binary tensor
extension (the ``Inference-Header-Content-Length`` header) in both directions.
The served signature is the physics one; the noise the ONNX graph takes is drawn here from the
request's ``seed`` (or fresh entropy, returned in the response parameters), so a request gives
the same showers however it was batched with others:
  inputs  energy FP32 [n] MeV, direction FP32 [n,3], pdg INT32 [n], position FP32 [n,3] mm
          (optional, default the origin), seed INT64 [1] (optional)
  outputs hit_shower INT64 [h], hit_cell INT64 [h], hit_energy FP32 [h] MeV
Concurrent requests are batched: one ONNX Runtime call runs the showers of all requests waiting
(up to ``max_batch`` showers, after at most ``max_delay_ms``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import web

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.inference.onnx import OnnxGenerator, run_session
from fastshower.models.base import noise_inputs
from fastshower.models.showers import particle_index
from fastshower.simhits import Primaries, eta_phi_direction

log = logging.getLogger(__name__)

DTYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INPUTS = {"energy": ("FP32", [-1]), "direction": ("FP32", [-1, 3]), "pdg": ("INT32", [-1]),
          "position": ("FP32", [-1, 3]), "seed": ("INT64", [1])}
OPTIONAL = ("position", "seed")
OUTPUTS = {"hit_shower": ("INT64", [-1]), "hit_cell": ("INT64", [-1]),
           "hit_energy": ("FP32", [-1])}


class BadRequest(Exception):
    """A request the server refuses with 400 and this message."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "fastshower"
    max_showers: int = 256  # per request
    max_body_mb: float = 64.0
    max_batch: int = 8  # showers per ONNX Runtime call
    max_delay_ms: float = 5.0
    threads: int = 1
    allow_extrapolation: bool = False


@dataclass
class Job:
    """One request's decoded inputs and the future its response waits on."""

    inputs: dict[str, np.ndarray]
    seed: int
    future: asyncio.Future = field(default=None)
    batch_showers: int = 0  # showers in the model call that served it


def decode_tensors(body: bytes, header_length: int | None) -> tuple[dict, dict]:
    """(request JSON, name -> array) from a KServe v2 request body (JSON or binary extension)."""
    head = body if header_length is None else body[:header_length]
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the request is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest("the request JSON is nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BadRequest("the request needs an 'inputs' list")
    offset = 0 if header_length is None else header_length
    arrays = {}
    for t in request["inputs"]:
        if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= set(t):
            raise BadRequest("every input needs name, shape and datatype")
        name, dtype = t["name"], DTYPES.get(t["datatype"])
        if dtype is None:
            raise BadRequest(f"input {name}: datatype {t['datatype']!r} is not supported")
        try:
            shape = [int(s) for s in t["shape"]]
            size = (t.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arrays[name] = np.frombuffer(body[offset:offset + size], dtype).reshape(shape)
                offset += size
            else:
                arrays[name] = np.asarray(t["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise BadRequest(f"input {name}: data do not match shape {t['shape']} and "
                             f"datatype {t['datatype']} ({err})") from None
    return request, arrays


def encode_outputs(request: dict, outputs: dict[str, np.ndarray], model: str,
                   parameters: dict) -> tuple[bytes, dict]:
    """The response body and headers: binary tensors where the request asked for them."""
    asked = {o.get("name"): (o.get("parameters") or {}).get("binary_data", False)
             for o in request.get("outputs") or []}
    unknown = set(asked) - set(outputs)
    if unknown:
        raise BadRequest(f"unknown output(s) {sorted(unknown)}; this model has {list(OUTPUTS)}")
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output", False))
    names = list(asked) or list(outputs)
    tensors, blobs = [], []
    for name in names:
        a = outputs[name]
        t = {"name": name, "datatype": OUTPUTS[name][0], "shape": list(a.shape)}
        if asked.get(name, binary_all):
            raw = np.ascontiguousarray(a).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = a.tolist()
        tensors.append(t)
    response = {"model_name": model, "model_version": "1", "outputs": tensors,
                "parameters": parameters}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


class ShowerService:
    """Checks requests against the model and runs batches of them."""

    def __init__(self, generator: OnnxGenerator, cfg: ServeConfig):
        self.generator, self.cfg = generator, cfg

    def check(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Validated model inputs (energy, position, direction, particle index) and the seed."""
        missing = [k for k in INPUTS if k not in arrays and k not in OPTIONAL]
        if missing:
            raise BadRequest(f"missing input(s) {missing}; inputs are {_signature(INPUTS)}")
        extra = set(arrays) - set(INPUTS)
        if extra:
            raise BadRequest(f"unknown input(s) {sorted(extra)}; inputs are {_signature(INPUTS)}")
        n = arrays["energy"].reshape(-1).shape[0]
        if not 1 <= n <= self.cfg.max_showers:
            raise BadRequest(f"a request holds 1 to {self.cfg.max_showers} showers, not {n}")
        energy = arrays["energy"].reshape(-1).astype(np.float32)
        position = arrays.get("position", np.zeros((n, 3), np.float32))
        direction = arrays["direction"]
        for name, a, shape in (("direction", direction, (n, 3)), ("position", position, (n, 3)),
                               ("pdg", arrays["pdg"], (n,))):
            if a.shape != shape:
                raise BadRequest(f"input {name} has shape {list(a.shape)}, expected "
                                 f"{list(shape)} for {n} showers")
        if not (np.isfinite(energy).all() and np.isfinite(direction).all()
                and np.isfinite(position).all()):
            raise BadRequest("inputs must be finite")
        if (energy <= 0).any():
            raise BadRequest("energies must be positive (MeV)")
        norm = np.linalg.norm(direction, axis=1)
        if (norm == 0).any():
            raise BadRequest("directions must not be zero vectors")
        direction = (direction / norm[:, None]).astype(np.float32)
        missing = np.flatnonzero(self.generator.geom.entry_cells(position, direction) < 0)
        if len(missing):
            raise BadRequest(f"{len(missing)} primaries miss the calorimeter (shower "
                             f"{missing[0]}: its straight line from position "
                             f"{position[missing[0]].tolist()} mm along "
                             f"{direction[missing[0]].tolist()} crosses no cell)")
        primaries = Primaries(arrays["pdg"].reshape(-1), energy, position, direction)
        outside = self.generator.ranges.outside(primaries)
        if outside and not self.cfg.allow_extrapolation:
            raise BadRequest("; ".join(outside))
        try:
            particle = particle_index(arrays["pdg"].astype(np.int64), self.generator.particles)
        except FastShowerError as err:
            raise BadRequest(str(err)) from None
        seed = (int(arrays["seed"].reshape(-1)[0]) if "seed" in arrays
                else secrets.randbits(63))
        return {"energy": energy, "position": position.astype(np.float32),
                "direction": direction, "particle": particle.astype(np.int64)}, seed

    def run(self, jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        """One ONNX Runtime call for all jobs; each job's noise comes from its own seed."""
        side = self.generator.side
        parts = [{**j.inputs, **noise_inputs(len(j.inputs["energy"]), side,
                                             np.random.default_rng(j.seed))} for j in jobs]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        shower, cell, energy = run_session(self.generator.session, batch)
        bounds = np.cumsum([0] + [len(p["energy"]) for p in parts])
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            sel = (shower >= lo) & (shower < hi)
            out.append({"hit_shower": shower[sel] - lo, "hit_cell": cell[sel],
                        "hit_energy": energy[sel].astype(np.float32)})
        return out


def _signature(spec: dict) -> str:
    return ", ".join(f"{k} {d}{s}" for k, (d, s) in spec.items())


class Batcher:
    """Collects jobs from concurrent requests into batches of up to max_batch showers."""

    def __init__(self, service: ShowerService, cfg: ServeConfig):
        self.service, self.cfg = service, cfg
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.batches = 0

    async def submit(self, job: Job) -> dict[str, np.ndarray]:
        job.future = asyncio.get_running_loop().create_future()
        await self.queue.put(job)
        return await job.future

    async def loop(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].inputs["energy"])
            deadline = asyncio.get_running_loop().time() + self.cfg.max_delay_ms / 1e3
            while size < self.cfg.max_batch:
                try:
                    timeout = max(deadline - asyncio.get_running_loop().time(), 0)
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                jobs.append(job)
                size += len(job.inputs["energy"])
            try:
                results = await asyncio.to_thread(self.service.run, jobs)
                self.batches += 1
                for job, result in zip(jobs, results, strict=True):
                    job.batch_showers = size
                    job.future.set_result(result)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                log.exception("inference failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)


def make_app(generator: OnnxGenerator, cfg: ServeConfig) -> web.Application:
    service = ShowerService(generator, cfg)
    batcher = Batcher(service, cfg)
    app = web.Application(client_max_size=int(cfg.max_body_mb * 2**20))
    name = cfg.model_name
    metadata = {"name": name, "versions": ["1"], "platform": "fastshower_onnxruntime",
                "inputs": [{"name": k, "datatype": d, "shape": s} for k, (d, s) in INPUTS.items()],
                "outputs": [{"name": k, "datatype": d, "shape": s}
                            for k, (d, s) in OUTPUTS.items()],
                "parameters": {"geometry_hash": generator.geom.hash,
                               "particles": generator.side["particles"],
                               "ranges": generator.side["ranges"]}}

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def model_or_404(request: web.Request) -> web.Response | None:
        m, v = request.match_info["model"], request.match_info.get("version", "1")
        if m != name or v != "1":
            return error(404, f"unknown model {m!r} version {v!r}; this server has {name!r} "
                              "version '1'")
        return None

    async def live(_):
        return web.json_response({"live": True})

    async def server_metadata(_):
        return web.json_response({"name": "fastshower", "version": __version__,
                                  "extensions": ["binary_tensor_data"]})

    async def model_metadata(request):
        return model_or_404(request) or web.json_response(metadata)

    async def model_ready(request):
        return model_or_404(request) or web.json_response({"name": name, "ready": True})

    async def infer(request):
        missing = model_or_404(request)
        if missing is not None:
            return missing
        body = await request.read()
        try:
            header = request.headers.get("Inference-Header-Content-Length")
            req, arrays = decode_tensors(body, int(header) if header is not None else None)
            job = Job(*service.check(arrays))
            result = await batcher.submit(job)
            payload, headers = encode_outputs(req, result, name, {
                "seed": job.seed, "batch_showers": job.batch_showers})
        except BadRequest as err:
            return error(400, str(err))
        except ValueError as err:
            return error(400, f"bad request: {err}")
        return web.Response(body=payload, headers=headers)

    async def start_batcher(app_):
        app_["batcher_task"] = asyncio.create_task(batcher.loop())

    async def stop_batcher(app_):
        app_["batcher_task"].cancel()

    for path in ("/v2/health/live", "/v2/health/ready"):
        app.router.add_get(path, live)
    app.router.add_get("/v2", server_metadata)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    app.on_startup.append(start_batcher)
    app.on_cleanup.append(stop_batcher)
    app["batcher"] = batcher
    return app


def serve(folder: str | Path, geom: Geometry, cfg: ServeConfig) -> None:
    """Run the server until interrupted."""
    generator = OnnxGenerator(folder, geom, threads=cfg.threads)
    web.run_app(make_app(generator, cfg), host=cfg.host, port=cfg.port, print=log.info)


def client_inputs(energy_mev, pdg, eta: float = 2.0, phi: float = np.pi / 2,
                  seed: int | None = None) -> list:
    """The request inputs of showers from the origin along (eta, phi), as Triton HTTP client
    tensors: ``client.infer(name, client_inputs([20e3], 22, seed=1))``."""
    import tritonclient.http as http

    energy = np.atleast_1d(np.asarray(energy_mev, np.float32))
    direction = eta_phi_direction(eta, phi)
    arrays = {"energy": energy,
              "direction": np.tile(direction, (len(energy), 1)).astype(np.float32),
              "pdg": np.full(len(energy), pdg, np.int32)}
    if seed is not None:
        arrays["seed"] = np.array([seed], np.int64)
    tensors = []
    for name, a in arrays.items():
        t = http.InferInput(name, list(a.shape), INPUTS[name][0])
        t.set_data_from_numpy(a)
        tensors.append(t)
    return tensors


def triton_repository(folder: str | Path, out: str | Path, name: str = "fastshower") -> Path:
    """A Triton model repository: OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx.

    Triton serves the ONNX graph's own signature, noise inputs included (a client draws them);
    the side file and model card go beside the config."""
    folder, out = Path(folder), Path(out)
    side = json.loads((folder / "model.json").read_text())
    grid = f"[ -1, {side['layers']}, {side['width']} ]"
    inputs = {"energy": ("TYPE_FP32", "[ -1 ]"), "position": ("TYPE_FP32", "[ -1, 3 ]"),
              "direction": ("TYPE_FP32", "[ -1, 3 ]"), "particle": ("TYPE_INT64", "[ -1 ]"),
              "z": ("TYPE_FP32", f"[ -1, {side['flow_dim']} ]"), "gumbel": ("TYPE_FP32", grid),
              "normal": ("TYPE_FP32", grid)}
    outputs = {"hit_shower": ("TYPE_INT64", "[ -1 ]"), "hit_cell": ("TYPE_INT64", "[ -1 ]"),
               "hit_energy": ("TYPE_FP32", "[ -1 ]")}
    config = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
              f"input [\n{_pbtxt(inputs)}\n]\noutput [\n{_pbtxt(outputs)}\n]\n"
              "instance_group [ { kind: KIND_CPU, count: 1 } ]\n")
    model_dir = out / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
    for f in ("model.json", "model_card.json"):
        (model_dir / f).write_text((folder / f).read_text())
    return model_dir


def _pbtxt(spec: dict[str, tuple[str, str]]) -> str:
    return ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {d} }}'
                       for n, (t, d) in spec.items())
