"""ONNX export of a generator and its ONNX Runtime back-end.

An export folder holds:
- ``model.onnx``: the generator's generation program (``export_module()``: FlowGNN's sampler,
  LayerHits' flow and pair networks) as one graph. Inputs (first axis = showers, float32
  unless said; inputs the program does not use are dropped by the export): ``energy`` (MeV),
  ``position`` (mm, 3), ``direction`` (unit vector, 3), ``particle`` (int64 index into the
  card's particle list), then the program's noise inputs (model.json "program.noise": name ->
  [standard normal | standard Gumbel, shape per shower]). Outputs: model.json
  "program.outputs"; FlowGNN's are the hits, one entry each: ``hit_shower`` (int64 index of the
  shower in the batch), ``hit_cell`` (int64 cell id), ``hit_energy`` (MeV).
- ``model.json``: the side file, what cannot live in the graph: geometry hash, particles with
  their PDG ids, the program's noise and outputs, the training ranges of the conditions, and
  "host": what the generator's host step needs to turn the outputs into showers (LayerHits:
  its placement settings and the per-hit layers of its energy network; the step itself is
  numpy code of the generator's module, run by both back-ends).
- ``model_card.json``: inputs, outputs, units, training data, validation metrics and the
  measured agreement of ONNX Runtime with PyTorch.
Noise is an input so that the same noise gives the same outputs in both back-ends; the
runtime draws it from a seed.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.base import (
    PHYSICS_INPUTS,
    ShowerGenerator,
    TrainingRanges,
    generator_class,
    noise_inputs,
    primaries_inputs,
    program_spec,
    run_program,
)
from fastshower.models.files import read_history
from fastshower.simhits import PARTICLES, Primaries, ShowerBatch, eta_phi_direction

OPSET = 17
FORMAT = "fastshower-onnx-2"  # 2: any program plus the generator's host step
TOLERANCE = 1e-4  # ONNX Runtime vs PyTorch, same noise: |a - b| <= TOLERANCE x (1 + |b|)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of an ONNX Runtime session, fed the inputs its graph declares (an export
    drops the inputs its program does not use)."""
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in wanted})


def _disagreement(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest |a - b| / (1 + |b|) over the outputs; inf where shapes or integers differ."""
    worst = 0.0
    for a, b in zip(reference, got, strict=True):
        if a.shape != b.shape:
            return np.inf
        if np.issubdtype(a.dtype, np.integer):
            if not np.array_equal(a, b):
                return np.inf
        elif a.size:
            worst = max(worst, float(np.max(np.abs(a - b) / (1 + np.abs(b)))))
    return worst


def _training_record(source: Path) -> dict:
    """Training data and last validation metrics of a run folder (what is recorded there)."""
    out: dict = {"source": str(source)}
    run = source if source.is_dir() else None
    if run is None:
        return out
    if (run / "config.yaml").is_file():
        out["config"] = yaml.safe_load((run / "config.yaml").read_text())
    rows = read_history(run)
    if rows:
        out["validation"] = {k: rows[-1][k] for k in ("step", "sep_power_mean", "fpd", "val_loss")
                             if k in rows[-1]}
    return out


def _by_name(program, names: list[str]):
    """``program`` called with its inputs by position in ``names`` order (as the ONNX export
    passes them), each given to it by name: a program's optional noise inputs (gan3d's) need
    not all be there."""
    import torch

    class ByName(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.program = program

        def forward(self, *args):
            return self.program(**dict(zip(names, args, strict=True)))

    return ByName()


def export_model(generator: ShowerGenerator, out: str | Path, check_showers: int = 4,
                 seed: int = 0) -> Path:
    """Write model.onnx, model.json and model_card.json for a generator that has an export
    module (``export_module()``, see models.base).

    Exporting checks ONNX Runtime against PyTorch on ``check_showers`` showers with the same
    noise and refuses to write a model whose outputs differ by more than TOLERANCE (relative,
    integers exactly)."""
    import torch

    program = generator.export_module()
    if program is None:
        raise FastShowerError(f"{generator.name} has no network to export to ONNX (it runs in "
                              "numpy); use it with the torch back-end")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = program_spec(program)
    side = {"format": FORMAT, "model": generator.name, "geometry_hash": generator.geom.hash,
            "particles": {name: PARTICLES[name] for name in generator.particles},
            "program": spec, "host": generator.export_side(), "card": generator.card(),
            "ranges": generator.ranges.to_dict(), "opset": OPSET,
            "fastshower_version": __version__}
    rng = np.random.default_rng(seed)
    ranges = generator.ranges
    e = np.exp(rng.uniform(*np.log(ranges.energy_gev), check_showers)) * 1e3
    eta = rng.uniform(*(ranges.eta or (2.0, 2.0)), check_showers)
    phi = np.deg2rad(rng.uniform(*(ranges.phi_deg or (90.0, 90.0)), check_showers))
    inputs = {"energy": e.astype(np.float32), "position": np.zeros((check_showers, 3), np.float32),
              "direction": eta_phi_direction(eta, phi).astype(np.float32),
              "particle": rng.integers(0, len(generator.particles), check_showers),
              **noise_inputs(check_showers, spec, rng)}
    names = [*PHYSICS_INPUTS, *spec["noise"]]
    outputs = spec["outputs"]
    tmp = out / "model.onnx.tmp"
    dynamic = {name: {0: "showers"} for name in names} | {
        name: {0: "hits" if name.startswith("hit_") else "showers"} for name in outputs}
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in zuko
        torch.onnx.export(_by_name(program, names),
                          tuple(torch.from_numpy(inputs[k]) for k in names), tmp,
                          dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic)
        reference = [t.numpy() for t in program(**{k: torch.from_numpy(v)
                                                    for k, v in inputs.items()})]
    export_s = time.perf_counter() - t0
    got = run_session(_session(tmp, 1), inputs)
    diff = _disagreement(reference, got)
    if diff > TOLERANCE:
        tmp.unlink()
        raise FastShowerError(f"ONNX Runtime disagrees with PyTorch (largest relative "
                              f"difference {diff}); nothing written")
    tmp.replace(out / "model.onnx")
    (out / "model.json").write_text(json.dumps(side, indent=2))
    noise = {"normal": "standard normal", "gumbel": "standard Gumbel"}
    card = {
        "name": f"fastshower {generator.name}", "format": "ONNX", "opset": OPSET,
        "program": " ".join((type(program).__doc__ or "").split()),
        "inputs": {"energy": "float32 [n] MeV", "position": "float32 [n,3] mm, start point",
                   "direction": "float32 [n,3] unit vector",
                   "particle": f"int64 [n] index into {list(side['particles'])}"} | {
            k: f"float32 [n,{','.join(map(str, shape))}] {noise[kind]}"
            for k, (kind, shape) in spec["noise"].items()},
        "outputs": {k: f"{a.dtype} [{'h' if k.startswith('hit_') else 'n'}"
                       f"{''.join(f',{d}' for d in a.shape[1:])}]"
                    for k, a in zip(outputs, got, strict=True)},
        "host_step": (f"fastshower.models.{generator.name} ({type(generator).host.__qualname__})"
                      if side["host"] else "none: the outputs are the hits"),
        "geometry_hash": generator.geom.hash, "conditions_range": side["ranges"],
        "training": {**_training_record(Path(generator.source)),
                     **({"trained_on": generator.trained_on} if generator.trained_on else {})},
        "check": {"showers": check_showers, "max_relative_diff": diff, "tolerance": TOLERANCE},
        "export_seconds": round(export_s, 1), "model_bytes": (out / "model.onnx").stat().st_size,
        "parameters": sum(p.numel() for p in program.parameters()),
        "approximations": f"see fastshower.models.{generator.name} and docs/inference.md",
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return out


class OnnxGenerator(ShowerGenerator):
    """An exported generator run by ONNX Runtime: the ONNX back-end of the generator contract
    (not registered: it is loaded from an export folder, not a model file). The program runs
    in ONNX Runtime, the host step is the generator's own (models.base.ShowerGenerator.host)."""

    def __init__(self, folder: str | Path, geom: Geometry, threads: int = 1):
        folder = Path(folder)
        if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
            raise FastShowerError(f"{folder} is not an exported model (model.onnx + model.json); "
                                  "make one with `fastshower export-model`")
        self.side = json.loads((folder / "model.json").read_text())
        if self.side.get("format") != FORMAT:
            raise FastShowerError(f"{folder} was exported by an older fastshower (format "
                                  f"{self.side.get('format')!r}); export it again")
        geom.require_same(self.side["geometry_hash"], str(folder))
        self.geom, self.source, self.name = geom, str(folder), self.side["model"]
        self.particles = list(self.side["particles"])
        self.ranges = TrainingRanges.from_dict(self.side["ranges"])
        self.session = _session(folder / "model.onnx", threads)
        # a program whose outputs are the hits needs no generator class (the default host)
        owner = generator_class(self.name) if self.side["host"] else ShowerGenerator
        self.finish = owner.host(self.side["host"], geom)

    def card(self) -> dict[str, str]:
        import onnxruntime as ort

        return {**self.side["card"], "inference_library": f"ONNX Runtime {ort.__version__} (CPU)",
                "model_format": f"ONNX (opset {OPSET}) + model.json + model_card.json"}

    def run(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
        """Physics inputs -> the program's outputs, by models.base.run_program (chunks, noise
        drawn chunk by chunk: as the torch back-end)."""
        return run_program(lambda part: run_session(self.session, part), inputs,
                           self.side["program"], rng)

    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        out = self.run(primaries_inputs(primaries, self.particles), rng)
        return self.finish(out, primaries, rng)

    def state(self) -> dict:
        raise FastShowerError(f"{self.source} is an ONNX export: it is written by export-model")

    @classmethod
    def from_state(cls, state: dict, geom: Geometry) -> OnnxGenerator:
        raise FastShowerError("an ONNX export is loaded from its folder (OnnxGenerator)")

    def metadata(self, seed: int) -> dict:
        return {**super().metadata(seed), "generator": f"fastshower {self.name} (onnxruntime)"}
