"""ONNX export of a generator and its ONNX Runtime back-end.

An export folder holds:
- ``model.onnx``: the generator's generation program (``export_module()``, e.g. FlowGNN's
  sampler) as one graph. Inputs (first axis = showers, float32 unless said; inputs the program
  does not use are dropped by the export): ``energy`` (MeV), ``position`` (mm, 3),
  ``direction`` (unit vector, 3), ``particle`` (int64 index into the card's particle list),
  ``z`` (standard normal, flow_dim),
  ``gumbel`` (standard Gumbel, layers x width), ``normal`` (standard normal, layers x width).
  Outputs, one entry per hit: ``hit_shower`` (int64 index of the shower in the batch),
  ``hit_cell`` (int64 cell id of the geometry), ``hit_energy`` (MeV).
- ``model.json``: the side file, what cannot live in the graph: geometry hash, particles with
  their PDG ids, the noise shapes, the training ranges of the conditions.
- ``model_card.json``: inputs, outputs, units, training data, validation metrics and the
  measured agreement of ONNX Runtime with PyTorch.
Noise is an input so that the same noise gives the same showers in both back-ends; the
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
    INPUTS,
    OUTPUTS,
    ShowerGenerator,
    TrainingRanges,
    noise_inputs,
    primaries_inputs,
    run_program,
)
from fastshower.models.files import read_history
from fastshower.models.showers import to_batch
from fastshower.simhits import PARTICLES, Primaries, ShowerBatch, eta_phi_direction

OPSET = 17
TOLERANCE_MEV = 1e-3  # ONNX Runtime vs PyTorch, per hit energy, same noise (relative 1e-5)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of an ONNX Runtime session, fed the inputs its graph declares (an export
    drops the inputs its program does not use, e.g. noise a generator does not draw)."""
    wanted = {i.name for i in session.get_inputs()}
    return session.run(list(OUTPUTS), {k: v for k, v in inputs.items() if k in wanted})


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


def export_model(generator: ShowerGenerator, out: str | Path, check_showers: int = 4,
                 seed: int = 0) -> Path:
    """Write model.onnx, model.json and model_card.json for a generator that has an export
    module (``export_module()``: inputs INPUTS, outputs OUTPUTS, ``noise_shapes``).

    Exporting checks ONNX Runtime against PyTorch on ``check_showers`` showers with the same
    noise and refuses to write a model that disagrees by more than TOLERANCE_MEV."""
    import torch

    sampler = generator.export_module()
    if sampler is None:
        raise FastShowerError(f"{generator.name} has no network to export to ONNX (it runs in "
                              "numpy); use it with the torch back-end")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    side = {"format": "fastshower-onnx-1", "model": generator.name,
            "geometry_hash": generator.geom.hash,
            "particles": {name: PARTICLES[name] for name in generator.particles},
            **sampler.noise_shapes, "ranges": generator.ranges.to_dict(), "opset": OPSET,
            "fastshower_version": __version__}
    rng = np.random.default_rng(seed)
    ranges = generator.ranges
    e = np.exp(rng.uniform(*np.log(ranges.energy_gev), check_showers)) * 1e3
    eta = rng.uniform(*(ranges.eta or (2.0, 2.0)), check_showers)
    phi = np.deg2rad(rng.uniform(*(ranges.phi_deg or (90.0, 90.0)), check_showers))
    inputs = {"energy": e.astype(np.float32), "position": np.zeros((check_showers, 3), np.float32),
              "direction": eta_phi_direction(eta, phi).astype(np.float32),
              "particle": rng.integers(0, len(generator.particles), check_showers),
              **noise_inputs(check_showers, side, rng)}
    tmp = out / "model.onnx.tmp"
    dynamic = {name: {0: "showers"} for name in INPUTS} | {name: {0: "hits"} for name in OUTPUTS}
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in zuko
        torch.onnx.export(sampler, tuple(torch.from_numpy(inputs[k]) for k in INPUTS), tmp,
                          dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes=dynamic)
        reference = [t.numpy() for t in sampler(**{k: torch.from_numpy(v)
                                                    for k, v in inputs.items()})]
    export_s = time.perf_counter() - t0
    got = run_session(_session(tmp, 1), inputs)
    same_cells = all(np.array_equal(a, b) for a, b in zip(reference[:2], got[:2], strict=True))
    diff = float(np.abs(reference[2] - got[2]).max()) if same_cells and len(got[2]) else np.inf
    if not same_cells or diff > TOLERANCE_MEV:
        tmp.unlink()
        raise FastShowerError(f"ONNX Runtime disagrees with PyTorch (same cells: {same_cells}, "
                              f"largest energy difference {diff} MeV); nothing written")
    tmp.replace(out / "model.onnx")
    (out / "model.json").write_text(json.dumps(side, indent=2))
    card = {
        "name": "fastshower FlowGNN", "format": "ONNX", "opset": OPSET,
        "inputs": {"energy": "float32 [n] MeV", "position": "float32 [n,3] mm, start point",
                   "direction": "float32 [n,3] unit vector",
                   "particle": f"int64 [n] index into {list(side['particles'])}",
                   "z": f"float32 [n,{side['flow_dim']}] standard normal",
                   "gumbel": f"float32 [n,{side['layers']},{side['width']}] standard Gumbel",
                   "normal": f"float32 [n,{side['layers']},{side['width']}] standard normal"},
        "outputs": {"hit_shower": "int64 [h] shower index in the batch",
                    "hit_cell": "int64 [h] cell id of the geometry",
                    "hit_energy": "float32 [h] MeV deposited in the cell's sensor"},
        "geometry_hash": generator.geom.hash, "conditions_range": side["ranges"],
        "training": _training_record(Path(generator.source)),
        "check": {"showers": check_showers, "hits": len(got[2]), "max_abs_diff_mev": diff,
                  "tolerance_mev": TOLERANCE_MEV},
        "export_seconds": round(export_s, 1), "model_bytes": (out / "model.onnx").stat().st_size,
        "parameters": sum(p.numel() for p in sampler.parameters()),
        "approximations": f"see fastshower.models.{generator.name} and docs/inference.md",
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return out


class OnnxGenerator(ShowerGenerator):
    """An exported generator run by ONNX Runtime: the ONNX back-end of the generator contract
    (not registered: it is loaded from an export folder, not a model file)."""

    def __init__(self, folder: str | Path, geom: Geometry, threads: int = 1):
        folder = Path(folder)
        if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
            raise FastShowerError(f"{folder} is not an exported model (model.onnx + model.json); "
                                  "make one with `fastshower export-model`")
        self.side = json.loads((folder / "model.json").read_text())
        geom.require_same(self.side["geometry_hash"], str(folder))
        self.geom, self.source, self.name = geom, str(folder), self.side["model"]
        self.particles = list(self.side["particles"])
        self.ranges = TrainingRanges.from_dict(self.side["ranges"])
        self.session = _session(folder / "model.onnx", threads)

    def run(self, inputs: dict[str, np.ndarray], rng: np.random.Generator):
        """Physics inputs -> (hit shower, hit cell, hit energy), by models.base.run_program
        (chunks of CHUNK showers, noise drawn chunk by chunk: as the torch back-end)."""
        return run_program(lambda part: run_session(self.session, part), inputs, self.side,
                           rng)

    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        shower, cell, energy = self.run(primaries_inputs(primaries, self.particles), rng)
        return to_batch(primaries, self.geom, shower, cell, energy.astype(np.float64))

    def state(self) -> dict:
        raise FastShowerError(f"{self.source} is an ONNX export: it is written by export-model")

    @classmethod
    def from_state(cls, state: dict, geom: Geometry) -> OnnxGenerator:
        raise FastShowerError("an ONNX export is loaded from its folder (OnnxGenerator)")

    def metadata(self, seed: int) -> dict:
        return {**super().metadata(seed), "generator": f"fastshower {self.name} (onnxruntime)"}
