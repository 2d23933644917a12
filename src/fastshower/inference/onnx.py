"""ONNX export of a generator and its ONNX Runtime back-end.

An export folder holds:
- ``model.onnx``: FlowGNNSampler as one graph. Inputs (first axis = showers, float32 unless
  said): ``energy`` (MeV), ``position`` (mm, 3), ``direction`` (unit vector, 3), ``particle``
  (int64 index into the card's particle list), ``z`` (standard normal, flow_dim),
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
from fastshower.models.files import read_history
from fastshower.models.showers import outside_range, particle_index, to_batch
from fastshower.simhits import PARTICLES, Primaries, ShowerBatch, eta_phi_direction

INPUTS = ("energy", "position", "direction", "particle", "z", "gumbel", "normal")
OUTPUTS = ("hit_shower", "hit_cell", "hit_energy")
OPSET = 17
TOLERANCE_MEV = 1e-3  # ONNX Runtime vs PyTorch, per hit energy, same noise (relative 1e-5)


def primaries_inputs(primaries: Primaries, particles: list[str]) -> dict:
    """The physics inputs of model.onnx."""
    return {"energy": primaries.energy_mev.astype(np.float32),
            "position": primaries.position_mm.astype(np.float32),
            "direction": primaries.direction.astype(np.float32),
            "particle": particle_index(primaries.pdg, particles).astype(np.int64)}


def noise_inputs(n: int, side: dict, rng: np.random.Generator) -> dict:
    """The random inputs of model.onnx for n showers."""
    grid = (n, side["layers"], side["width"])
    return {"z": rng.standard_normal((n, side["flow_dim"]), dtype=np.float32),
            "gumbel": rng.gumbel(size=grid).astype(np.float32),
            "normal": rng.standard_normal(grid, dtype=np.float32)}


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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


def export_model(generator, out: str | Path, check_showers: int = 4, seed: int = 0) -> Path:
    """Write model.onnx, model.json and model_card.json for a FlowGNN ``Generator``.

    Exporting checks ONNX Runtime against PyTorch on ``check_showers`` showers with the same
    noise and refuses to write a model that disagrees by more than TOLERANCE_MEV."""
    if generator.name != "flowgnn":
        raise FastShowerError(f"ONNX export is for neural generators (flowgnn); {generator.name} "
                              "runs in numpy at under 3 ms per shower and has no network")
    import torch

    from fastshower.inference.sampler import FlowGNNSampler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = generator.model
    sampler = FlowGNNSampler(model).eval()
    side = {"format": "fastshower-onnx-1", "model": "flowgnn", "geometry_hash": model.geom_hash,
            "particles": {name: PARTICLES[name] for name in model.particles},
            "flow_dim": sampler.flow_dim, "layers": sampler.n_layers, "width": sampler.width,
            "ranges": model.norms["ranges"], "opset": OPSET, "fastshower_version": __version__}
    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(*np.log(side["ranges"]["energy (GeV)"]), check_showers)) * 1e3
    eta = rng.uniform(*side["ranges"]["eta"], check_showers)
    phi = np.deg2rad(rng.uniform(*side["ranges"]["phi (deg)"], check_showers))
    inputs = {"energy": e.astype(np.float32), "position": np.zeros((check_showers, 3), np.float32),
              "direction": eta_phi_direction(eta, phi).astype(np.float32),
              "particle": rng.integers(0, len(model.particles), check_showers),
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
    got = _session(tmp, 1).run(list(OUTPUTS), inputs)
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
        "geometry_hash": model.geom_hash, "conditions_range": side["ranges"],
        "training": _training_record(Path(generator.source)),
        "check": {"showers": check_showers, "hits": len(got[2]), "max_abs_diff_mev": diff,
                  "tolerance_mev": TOLERANCE_MEV},
        "export_seconds": round(export_s, 1), "model_bytes": (out / "model.onnx").stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "approximations": "see fastshower.inference.sampler and docs/inference.md",
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return out


class OnnxGenerator:
    """An exported generator run by ONNX Runtime, with Generator's interface."""

    def __init__(self, folder: str | Path, geom: Geometry, allow_extrapolation: bool = False,
                 threads: int = 1, max_batch: int = 16):
        folder = Path(folder)
        if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
            raise FastShowerError(f"{folder} is not an exported model (model.onnx + model.json); "
                                  "make one with `fastshower export-model`")
        self.side = json.loads((folder / "model.json").read_text())
        geom.require_same(self.side["geometry_hash"], str(folder))
        self.geom, self.source, self.name = geom, str(folder), self.side["model"]
        self.allow_extrapolation, self.max_batch = allow_extrapolation, max_batch
        self.particles = list(self.side["particles"])
        self.session = _session(folder / "model.onnx", threads)

    def outside_range(self, primaries: Primaries) -> list[str]:
        return outside_range(self.side["ranges"], primaries)

    def run(self, inputs: dict[str, np.ndarray], rng: np.random.Generator):
        """Physics inputs -> (hit shower, hit cell, hit energy), in chunks of max_batch
        (memory grows with the batch: every layer of every shower is evaluated)."""
        n = len(inputs["energy"])
        parts = []
        for lo in range(0, n, self.max_batch):
            chunk = {k: v[lo:lo + self.max_batch] for k, v in inputs.items()}
            chunk |= noise_inputs(len(chunk["energy"]), self.side, rng)
            shower, cell, energy = self.session.run(list(OUTPUTS), chunk)
            parts.append((shower + lo, cell, energy))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))

    def generate(self, primaries: Primaries, seed: int = 0) -> ShowerBatch:
        outside = self.outside_range(primaries)
        if outside and not self.allow_extrapolation:
            raise FastShowerError("; ".join(outside) + " (allow extrapolation to generate anyway)")
        shower, cell, energy = self.run(primaries_inputs(primaries, self.particles),
                                        np.random.default_rng(seed))
        return to_batch(primaries, self.geom, shower, cell, energy.astype(np.float64))

    def metadata(self, seed: int) -> dict:
        return {"generator": f"fastshower {self.name} (onnxruntime)", "model_source": self.source,
                "fastshower_version": __version__, "geometry_hash": self.geom.hash, "seed": seed,
                "physics_mode": "ml", "extrapolation_allowed": self.allow_extrapolation}
