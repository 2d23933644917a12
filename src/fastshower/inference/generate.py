"""Batched generation with a trained generator: the Python API and the ROOT writer behind
`fastshower generate`. Generated files use the same sim-hit schema as Geant4's, so the same
validation runs on both.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.base import ShowerGenerator, load
from fastshower.progress import Tracker
from fastshower.simhits import Primaries, SimHitWriter

log = logging.getLogger(__name__)


def load_generator(path: str | Path, geom: Geometry, backend: str = "torch",
                   threads: int = 1) -> ShowerGenerator:
    """A model file or run folder with PyTorch (any registered generator), or an export folder
    with ONNX Runtime."""
    if backend == "torch":
        if (Path(path) / "model.onnx").is_file():
            raise FastShowerError(f"{path} is an ONNX export: use --backend onnx")
        return load(path, geom)
    if backend == "onnx":
        from fastshower.inference.onnx import OnnxGenerator

        if (Path(path) / "model.pt").is_file() or Path(path).suffix == ".pt":
            raise FastShowerError(f"{path} is a PyTorch model: export it first with "
                                  f"`fastshower export-model --run {path} --out DIR`")
        return OnnxGenerator(path, geom, threads=threads)
    raise FastShowerError(f"--backend must be torch or onnx, not {backend!r}")


def generate(generator: ShowerGenerator, primaries: Primaries, seed: int = 0,
             batch_size: int = 500):
    """Showers of ``primaries`` in batches of ``batch_size``, each batch with its own seed
    (seed * 100003 + k): yields ShowerBatches in order."""
    for k, lo in enumerate(range(0, len(primaries), batch_size)):
        part = primaries.subset(slice(lo, lo + batch_size))
        yield generator.sample(part, np.random.default_rng(seed * 100_003 + k))


def generate_file(generator: ShowerGenerator, primaries: Primaries, out: str | Path,
                  seed: int = 0, batch_size: int = 500, show_progress: bool = True,
                  allow_extrapolation: bool = False) -> Path:
    """Generate showers for ``primaries`` in batches and write one sim-hit ROOT file.
    Conditions outside the generator's training ranges are refused unless
    ``allow_extrapolation`` (then logged and recorded in the file)."""
    outside = generator.ranges.check(primaries, allow_extrapolation)
    if outside:
        log.warning("extrapolating: %s", "; ".join(outside))
    writer = SimHitWriter(out, {**generator.metadata(seed), "extrapolation": outside,
                                "extrapolation_allowed": allow_extrapolation})
    try:
        cpu = 0.0
        with Tracker(f"generating ({generator.name})", len(primaries),
                     enabled=show_progress) as bar:
            batches = generate(generator, primaries, seed, batch_size)
            while True:
                start = time.process_time()
                batch = next(batches, None)
                cpu += time.process_time() - start
                if batch is None:
                    break
                writer.write(batch)
                bar.update(advance=len(batch))
    except BaseException:
        writer.abort()
        raise
    n = max(len(primaries), 1)
    writer.metadata |= {
        "time_per_shower": f"{1e3 * cpu / n:.3g} ms CPU per shower (measured writing this file: "
                           f"{len(primaries)} showers in batches of {batch_size}, "
                           f"{torch.get_num_threads()} torch thread(s))",
        "memory": f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
                  "(the generating process, measured writing this file)"}
    return writer.close()
