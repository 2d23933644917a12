"""The generator contract: what a shower generator is, and the registry that names them.

A generator turns primaries (simhits.Primaries: MeV, mm, unit directions) into showers on its
geometry's cells (a ShowerBatch). Each implementation is one module with one subclass of
``ShowerGenerator`` whose class attribute ``name`` registers it; the trainer, ``generate``,
``serve``, the Geant4 hook, ``validate`` and the benchmarks find it through ``generator_class``
and model files through ``load``. docs/design.md says how to add one.

Capabilities beyond sampling are declared, not guessed:
- ``training``: "fit" (a one-pass fit: implement ``fit``), "steps" (gradient descent driven by
  training.loop: implement ``training_data``, ``build``, ``forward``, ``loss_weights`` and
  ``stages``, docs/design.md), or "none";
- ``export_module()``: the generation program, a torch module that ONNX export traces, or None;
  ``host(export_side(), geom)`` turns its outputs into showers (numpy; by default the outputs
  are the hits). ``sample_program`` runs both: the one path of the torch and ONNX back-ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.models.files import expand, load_model_file, save_atomic
from fastshower.models.pretrained import pretrained
from fastshower.models.showers import particle_index, to_batch
from fastshower.simhits import Primaries, ShowerBatch

# Exportable generation programs (ShowerGenerator.export_module) take the physics inputs, then
# their noise inputs (attribute ``noise``: name -> (kind, shape per shower), drawn in that order),
# and return ``output_names``: per-shower arrays, or per-hit arrays named hit_* with
# ``hit_shower`` the shower's index in the call; they run on ``chunk`` showers at a time
# (default CHUNK), which bounds their memory.
PHYSICS_INPUTS = ("energy", "position", "direction", "particle")
HIT_OUTPUTS = ("hit_shower", "hit_cell", "hit_energy")
CHUNK = 16  # showers per program call; noise is drawn chunk by chunk in this order
ENERGY_MARGIN = 0.03  # relative, on both ends of the energy range
ANGLE_MARGIN = 0.02  # of the range's width, on both ends of the eta and phi ranges
LEGACY_KEYS = {"energy (GeV)": "energy_gev", "phi (deg)": "phi_deg"}  # model files before 0.2


@dataclass(frozen=True)
class TrainingRanges:
    """The conditions a generator was trained on: [low, high] of the primary energy (GeV), and of
    the direction's eta and phi (degrees) where the generator depends on them."""

    energy_gev: tuple[float, float]
    eta: tuple[float, float] | None = None
    phi_deg: tuple[float, float] | None = None

    @classmethod
    def of(cls, primaries: Primaries) -> TrainingRanges:
        """The ranges spanned by a training sample."""
        eta, phi = primaries.eta_phi()
        return cls(_span(primaries.energy_mev / 1e3), _span(eta), _span(np.rad2deg(phi)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainingRanges:
        d = {LEGACY_KEYS.get(k, k): tuple(float(x) for x in v) for k, v in d.items()}
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items() if v is not None}

    def outside(self, primaries: Primaries) -> list[str]:
        """The conditions outside the ranges (with margins), as readable lines; [] if none."""
        eta, phi = primaries.eta_phi()
        values = {"energy_gev": primaries.energy_mev / 1e3, "eta": eta,
                  "phi_deg": np.rad2deg(phi)}
        out = []
        for name, bounds in self.__dict__.items():
            if bounds is None or not len(primaries):
                continue
            lo, hi = bounds
            margin = ((ENERGY_MARGIN * lo, ENERGY_MARGIN * hi) if name == "energy_gev"
                      else (ANGLE_MARGIN * (hi - lo) + 1e-6,) * 2)
            v = values[name]
            if v.min() < lo - margin[0] or v.max() > hi + margin[1]:
                out.append(f"{name} {v.min():.4g}..{v.max():.4g} is outside the training range "
                           f"{lo:.4g}..{hi:.4g}")
        return out

    def check(self, primaries: Primaries, allow_extrapolation: bool = False) -> list[str]:
        """The one training-range check: raises for conditions outside the ranges unless
        ``allow_extrapolation``; returns the lines (for a log and the output's metadata)."""
        outside = self.outside(primaries)
        if outside and not allow_extrapolation:
            raise FastShowerError("; ".join(outside) + " (allow extrapolation explicitly, e.g. "
                                  "--allow-extrapolation, to generate anyway)")
        return outside


def _span(v: np.ndarray) -> tuple[float, float]:
    return float(v.min()), float(v.max())


class ShowerGenerator(ABC):
    """A conditional shower generator bound to its geometry.

    Instances have ``geom``, ``particles`` (names it can generate, simhits.PARTICLES keys),
    ``ranges`` (TrainingRanges) and ``source`` (where it was loaded from).
    """

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[ShowerGenerator]]] = {}
    training: ClassVar[Literal["fit", "steps", "none"]] = "none"
    config_type: ClassVar[type[BaseModel] | None] = None  # its section of a training config

    geom: Geometry
    particles: list[str]
    ranges: TrainingRanges
    source: str = ""
    trained_on: dict | None = None  # the training sample (set by the trainer, kept in the file)
    questions: ClassVar[dict[str, str]] = {}  # its fixed answers to MODEL_QUESTIONS (card)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            ShowerGenerator.registry[cls.name] = cls

    @abstractmethod
    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        """Showers for ``primaries``, placed on the geometry's cells (no range check here:
        callers check ``ranges`` once)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild it, as tensors and plain data (a model file)."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any], geom: Geometry) -> ShowerGenerator:
        """Rebuild from ``state()`` on the geometry it was made with."""

    def export_module(self) -> torch.nn.Module | None:
        """The generation program for ONNX export (see PHYSICS_INPUTS), or None when the
        generator has no network."""
        return None

    def export_side(self) -> dict:
        """What the host step needs besides the program (JSON; model.json's "host")."""
        return {}

    @classmethod
    def host(cls, side: dict, geom: Geometry) -> Callable[..., ShowerBatch]:
        """The numpy step after the program: (outputs, primaries, rng) -> showers. Default: the
        outputs are the hits (HIT_OUTPUTS)."""
        def hits(out: dict, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
            return to_batch(primaries, geom, out["hit_shower"], out["hit_cell"],
                            out["hit_energy"].astype(np.float64))
        return hits

    def sample_program(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        """``sample`` by the export program (torch) and the host step: as the ONNX Runtime
        back-end runs them, so the same seed gives the same showers in both."""
        program = self.export_module()
        if "_params" not in self.__dict__:  # listing them takes longer than a shower at batch 1
            self.__dict__["_params"] = list(program.parameters())
        weights = tuple(p._version for p in self.__dict__["_params"])  # changed by training
        if self.__dict__.get("_host_weights") != weights:  # the host may hold network layers
            self.__dict__["_host"] = self.host(self.export_side(), self.geom)
            self.__dict__["_host_weights"] = weights
        out = run_program(torch_call(program), primaries_inputs(primaries, self.particles),
                          program_spec(program), rng)
        return self.__dict__["_host"](out, primaries, rng)

    @classmethod
    def fit(cls, train: ShowerBatch, geom: Geometry, config: BaseModel | None,
            seed: int) -> ShowerGenerator:
        """A one-pass fit to Geant4 showers (generators with ``training = "fit"``)."""
        raise FastShowerError(f"{cls.name} is not fitted in one pass")

    # --- files ------------------------------------------------------------------------------
    def save(self, path: str | Path, state: dict | None = None) -> Path:
        """Write the model file (atomic): ``state`` (default: ``state()``), the registry name
        and the geometry identity."""
        path = Path(path)
        save_atomic({**(self.state() if state is None else state), "model": self.name,
                     "geometry_hash": self.geom.hash,
                     **({"trained_on": self.trained_on} if self.trained_on else {})}, path)
        return path

    def card(self) -> dict[str, str]:
        """Its answers to the questions every fast-simulation user asks
        (validation.report.MODEL_QUESTIONS) that it knows; time and memory are measured by
        whoever generates (generate_file)."""
        r = self.ranges
        conditions = f"{', '.join(self.particles)}; {r.energy_gev[0]:g}-{r.energy_gev[1]:g} GeV"
        if r.eta:
            conditions += f", eta {r.eta[0]:.3g}-{r.eta[1]:.3g}"
        if r.phi_deg:
            conditions += f", phi {r.phi_deg[0]:.3g}-{r.phi_deg[1]:.3g} deg"
        out = {"particles_and_conditions": conditions,
               "inference_library": f"PyTorch {torch.__version__.split('+')[0]} (CPU)",
               "gpu_tested": "no (every measurement so far on CPU)", **self.questions}
        if self.trained_on:
            t = self.trained_on
            out["training_set_size"] = (f"{t['showers']} Geant4 showers for training, "
                                        f"{t['validation']} for model selection ({t['data']})")
        return out

    def metadata(self, seed: int) -> dict:
        """What a sim-hit file made by this generator records about it."""
        return {"generator": f"fastshower {self.name}", "model_source": self.source,
                "fastshower_version": __version__, "geometry_hash": self.geom.hash,
                "seed": seed, "physics_mode": "ml", "torch_threads": torch.get_num_threads(),
                **self.card()}


def primaries_inputs(primaries: Primaries, particles: list[str]) -> dict[str, np.ndarray]:
    """The physics inputs of a generation program (and of model.onnx): energy (MeV), position
    (mm), unit direction (float32) and the index of each particle in ``particles``."""
    return {"energy": primaries.energy_mev.astype(np.float32),
            "position": primaries.position_mm.astype(np.float32),
            "direction": primaries.direction.astype(np.float32),
            "particle": particle_index(primaries.pdg, particles).astype(np.int64)}


def program_spec(program: torch.nn.Module) -> dict:
    """A program's noise inputs and output names, as model.json records them."""
    return {"noise": {k: [kind, list(shape)] for k, (kind, shape) in program.noise.items()},
            "outputs": list(program.output_names), "chunk": getattr(program, "chunk", CHUNK)}


def noise_inputs(n: int, spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The random inputs of a program (``spec``: program_spec) for n showers, in order."""
    out = {}
    for name, (kind, shape) in spec["noise"].items():
        size = (n, *shape)
        out[name] = (rng.standard_normal(size, dtype=np.float32) if kind == "normal" else
                     rng.gumbel(size=size).astype(np.float32))
    return out


def run_program(call: Callable[[dict], Sequence], inputs: dict[str, np.ndarray], spec: dict,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The outputs (name -> array, all showers) of a generation program (``spec``:
    program_spec) run by ``call`` (a torch module or an ONNX Runtime session behind it) over the
    showers in chunks, each chunk's noise drawn from ``rng`` in order: the one convention by
    which both back-ends give the same showers for the same seed."""
    parts: dict[str, list] = {name: [] for name in spec["outputs"]}
    n, chunk = len(inputs["energy"]), spec["chunk"]
    for lo in range(0, n, chunk):
        part = {k: v[lo:lo + chunk] for k, v in inputs.items()}
        part |= noise_inputs(len(part["energy"]), spec, rng)
        for name, a in zip(spec["outputs"], call(part), strict=True):
            parts[name].append(np.asarray(a) + (lo if name == "hit_shower" else 0))
    return {k: np.concatenate(v) for k, v in parts.items()}


def split_outputs(out: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    """The outputs of showers lo..hi-1 of a program's outputs (hit_shower renumbered)."""
    if "hit_shower" not in out:
        return {k: v[lo:hi] for k, v in out.items()}
    sel = (out["hit_shower"] >= lo) & (out["hit_shower"] < hi)
    return {k: v[sel] - (lo if k == "hit_shower" else 0) for k, v in out.items()}


def torch_call(module: torch.nn.Module) -> Callable[[dict], Sequence]:
    """``call`` for run_program: a torch program on numpy inputs, without gradients."""
    def call(part: dict) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(**{k: torch.from_numpy(v)
                                                 for k, v in part.items()})]
    return call


class NetworkGenerator(torch.nn.Module, ShowerGenerator):
    """A generator made of torch networks, built from (geometry, particles, its config_type,
    the normalisation constants fitted on its training sample): model files of those and the
    weights."""

    def __init__(self, geom: Geometry, particles: list[str], cfg: BaseModel, norms: dict):
        super().__init__()
        self.cfg, self.particles, self.norms, self.geom = cfg, particles, norms, geom
        self.ranges = TrainingRanges.from_dict(norms["ranges"])

    # Adam's (beta1, beta2); adversarial models use a shorter momentum (0.5)
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    def selection_loss(self, stage: str, record: dict) -> float:
        """What picks a stage's best weights (and stops it early) from a validation record:
        by default the stage's weighted validation loss terms."""
        return sum(self.loss_weights[k] * record[f"val_{k}"] for k in self.stages[stage])

    def state(self, stages: dict[str, dict] | None = None) -> dict:
        """Everything generation needs; ``stages`` optionally gives each stage's weights
        separately (e.g. each at its best validation loss)."""
        weights = self.state_dict() if stages is None else {
            f"{stage}.{k}": v for stage, sd in stages.items() for k, v in sd.items()}
        return {"config": self.cfg.model_dump(), "particles": self.particles,
                "norms": self.norms, "state_dict": weights}

    @torch.inference_mode()  # no autograd bookkeeping: 5 % of a batch-1 run (docs/models.md)
    def sample(self, primaries: Primaries, rng: np.random.Generator) -> ShowerBatch:
        """Showers for the given primaries, placed on the geometry's cells: the export program
        and the host step, as the ONNX Runtime back-end runs them (same seed, same showers)."""
        if self.training:
            self.eval()
        return self.sample_program(primaries, rng)

    @classmethod
    def from_state(cls, d: dict, geom: Geometry) -> NetworkGenerator:
        model = cls(geom, d["particles"], cls.config_type(**d["config"]), d["norms"])
        model.load_state_dict(expand(d["state_dict"]))
        return model.eval()


def generator_class(name: str) -> type[ShowerGenerator]:
    """The registered generator called ``name``, with a clear error for an unknown one (the
    package's own generators register when fastshower.models is imported)."""
    if name not in ShowerGenerator.registry:
        raise FastShowerError(f"unknown generator {name!r}; available: "
                              f"{', '.join(sorted(ShowerGenerator.registry))}")
    return ShowerGenerator.registry[name]


SHIPPED = "shipped:"  # `shipped:layerhits`: a model shipped in the package (models/pretrained)


def load(path: str | Path, geom: Geometry) -> ShowerGenerator:
    """A generator from its model file (or a run folder's model.pt, or ``shipped:NAME``),
    checked against ``geom``."""
    if str(path).startswith(SHIPPED):
        path = pretrained(str(path)[len(SHIPPED):])
    saved = load_model_file(path)
    geom.require_same(saved.get("geometry_hash"), str(path))
    generator = generator_class(str(saved.get("model"))).from_state(saved, geom)
    generator.source, generator.trained_on = str(path), saved.get("trained_on")
    return generator
