"""A Triton model repository for an export: the same ONNX graph served by NVIDIA Triton."""

from __future__ import annotations

import json
from pathlib import Path

from fastshower.errors import FastShowerError
from fastshower.models.base import HIT_OUTPUTS


def triton_repository(folder: str | Path, out: str | Path, name: str = "fastshower") -> Path:
    """A Triton model repository: OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx.

    Triton serves the ONNX graph's own signature, noise inputs included (a client draws them);
    the side file and model card go beside the config."""
    folder, out = Path(folder), Path(out)
    side = json.loads((folder / "model.json").read_text())
    program = side["program"]
    if side["host"] or program["outputs"] != list(HIT_OUTPUTS):
        raise FastShowerError(f"{side['model']}'s graph is not the whole generator (its outputs "
                              "go through fastshower's host step, e.g. LayerHits' placement on "
                              "cells); serve it with `fastshower serve`")
    inputs = {"energy": ("TYPE_FP32", "[ -1 ]"), "position": ("TYPE_FP32", "[ -1, 3 ]"),
              "direction": ("TYPE_FP32", "[ -1, 3 ]"), "particle": ("TYPE_INT64", "[ -1 ]")} | {
        name: ("TYPE_FP32", f"[ -1, {', '.join(map(str, shape))} ]")
        for name, (_, shape) in program["noise"].items()}
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
