"""Batched generation with a trained model: the Python API and the ROOT writer behind
`fastshower generate`. Generated files use the same sim-hit schema as Geant4's, so the same
validation runs on both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.files import load_model_file
from fastshower.models.flowgnn import FlowGNN
from fastshower.models.parametric import ParametricShower
from fastshower.progress import Tracker
from fastshower.simhits import Primaries, ShowerBatch, SimHitWriter

log = logging.getLogger(__name__)


class Generator:
    """A trained model bound to its geometry: ``generate(primaries)`` -> ShowerBatch."""

    def __init__(self, run: str | Path, geom: Geometry, allow_extrapolation: bool = False):
        self.allow_extrapolation = allow_extrapolation
        saved = load_model_file(run)
        self.source = str(run)
        self.name = saved.get("model")
        geom.require_same(saved.get("geometry_hash"), str(run))
        self.geom = geom
        if self.name == "parametric":
            self.model = ParametricShower.from_dict(saved["params"])
            self.particles = list(saved["params"]["particles"])
        elif self.name == "flowgnn":
            self.model = FlowGNN.from_export(saved, geom)
            self.particles = list(saved["particles"])
        else:
            raise FastShowerError(f"{run}: unknown model type {self.name!r}")

    def generate(self, primaries: Primaries, seed: int = 0) -> ShowerBatch:
        """Showers for n primaries (MeV, mm; see simulation.gun.sample_primaries)."""
        outside = self.outside_range(primaries)
        if outside and not self.allow_extrapolation:
            raise FastShowerError("; ".join(outside) + " (allow extrapolation to generate anyway)")
        rng = np.random.default_rng(seed)
        if self.name == "parametric":
            return self.model.sample(primaries, self.geom, rng)
        return self.model.generate(primaries, rng, allow_extrapolation=True)

    def outside_range(self, primaries: Primaries) -> list[str]:
        """Conditions outside the model's training range, as readable lines."""
        return self.model.outside_range(primaries)

    def metadata(self, seed: int) -> dict:
        return {"generator": f"fastshower {self.name}", "model_source": self.source,
                "fastshower_version": __version__, "geometry_hash": self.geom.hash,
                "seed": seed, "physics_mode": "ml", "torch_threads": torch.get_num_threads(),
                "extrapolation_allowed": self.allow_extrapolation}


def load_generator(path: str | Path, geom: Geometry, backend: str = "torch",
                   allow_extrapolation: bool = False, threads: int = 1):
    """A run folder (or model.pt) with PyTorch, or an export folder with ONNX Runtime."""
    if backend == "torch":
        if (Path(path) / "model.onnx").is_file():
            raise FastShowerError(f"{path} is an ONNX export: use --backend onnx")
        return Generator(path, geom, allow_extrapolation)
    if backend == "onnx":
        from fastshower.inference.onnx import OnnxGenerator

        if (Path(path) / "model.pt").is_file() or Path(path).suffix == ".pt":
            raise FastShowerError(f"{path} is a PyTorch model: export it first with "
                                  f"`fastshower export-model --run {path} --out DIR`")
        return OnnxGenerator(path, geom, allow_extrapolation, threads=threads)
    raise FastShowerError(f"--backend must be torch or onnx, not {backend!r}")


def generate_file(generator, primaries: Primaries, out: str | Path,
                  seed: int = 0, batch_size: int = 500, show_progress: bool = True) -> Path:
    """Generate showers for ``primaries`` in batches and write one sim-hit ROOT file."""
    n = len(primaries)
    outside = generator.outside_range(primaries)
    if outside and not generator.allow_extrapolation:
        raise FastShowerError("; ".join(outside) + " (--allow-extrapolation to generate anyway)")
    if outside:
        log.warning("extrapolating: %s", "; ".join(outside))
    writer = SimHitWriter(out, {**generator.metadata(seed), "extrapolation": outside})
    try:
        with Tracker(f"generating ({generator.name})", n, enabled=show_progress) as bar:
            for k, lo in enumerate(range(0, n, batch_size)):
                part = primaries.subset(slice(lo, lo + batch_size))
                writer.write(generator.generate(part, seed=seed * 100_003 + k))
                bar.update(advance=len(part))
    except BaseException:
        writer.abort()
        raise
    return writer.close()
