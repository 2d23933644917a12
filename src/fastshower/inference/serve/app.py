"""The HTTP application: request checks against the model, the routes, and `serve`."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiohttp import web

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.inference.onnx import OnnxGenerator, run_session
from fastshower.inference.serve.batcher import Batcher, Job
from fastshower.inference.serve.protocol import (
    INPUTS,
    OPTIONAL,
    OUTPUTS,
    BadRequest,
    decode_tensors,
    encode_outputs,
    signature,
)
from fastshower.models.base import noise_inputs, split_outputs
from fastshower.models.showers import particle_index
from fastshower.simhits import Primaries
from fastshower.simulation.gun import require_on_detector

log = logging.getLogger(__name__)


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


class ShowerService:
    """Checks requests against the model and runs batches of them."""

    def __init__(self, generator: OnnxGenerator, cfg: ServeConfig):
        self.generator, self.cfg = generator, cfg

    def check(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int,
                                                            Primaries]:
        """Validated model inputs (energy, position, direction, particle index), the seed and
        the primaries."""
        missing = [k for k in INPUTS if k not in arrays and k not in OPTIONAL]
        if missing:
            raise BadRequest(f"missing input(s) {missing}; inputs are {signature(INPUTS)}")
        extra = set(arrays) - set(INPUTS)
        if extra:
            raise BadRequest(f"unknown input(s) {sorted(extra)}; inputs are {signature(INPUTS)}")
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
        primaries = Primaries(arrays["pdg"].reshape(-1), energy, position, direction)
        try:
            require_on_detector(self.generator.geom, primaries)
        except FastShowerError as err:
            raise BadRequest(str(err)) from None
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
                "direction": direction, "particle": particle.astype(np.int64)}, seed, primaries

    def run(self, jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        """One ONNX Runtime call for all jobs, then the generator's host step job by job; each
        job's noise comes from its own seed (its showers do not depend on the batching)."""
        gen = self.generator
        rngs = [np.random.default_rng(j.seed) for j in jobs]
        parts = [{**j.inputs, **noise_inputs(len(j.inputs["energy"]), gen.side["program"], rng)}
                 for j, rng in zip(jobs, rngs, strict=True)]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        outputs = dict(zip(gen.side["program"]["outputs"],
                           run_session(gen.session, batch), strict=True))
        bounds = np.cumsum([0] + [len(p["energy"]) for p in parts])
        out = []
        for job, rng, lo, hi in zip(jobs, rngs, bounds[:-1], bounds[1:], strict=True):
            showers = gen.finish(split_outputs(outputs, lo, hi), job.primaries, rng)
            shower, cell, energy = showers.flat()
            out.append({"hit_shower": shower.astype(np.int64), "hit_cell": cell.astype(np.int64),
                        "hit_energy": energy.astype(np.float32)})
        return out


def make_app(generator: OnnxGenerator, cfg: ServeConfig) -> web.Application:
    service = ShowerService(generator, cfg)
    batcher = Batcher(service.run, cfg.max_batch, cfg.max_delay_ms)
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
