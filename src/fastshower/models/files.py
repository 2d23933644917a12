"""Model files: what a trained generator or regression saves, read back without running code.

A model file holds tensors and plain data only (dicts, lists, strings, numbers) and is read with
``torch.load(weights_only=True)``: a file whose unpickling would build other objects (and so
could run code) is refused. Files are written to a temporary name and renamed, so a crash never
leaves half a file. Below the models in the layering: models, training and inference use it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from fastshower.errors import FastShowerError


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def compact(state: dict) -> dict:
    """A state dict for shipping: floating tensors as float16, boolean ones (a spline flow's
    masks: a third of LayerHits' file) as bits; ``expand`` restores it."""
    return {k: v.half() if v.is_floating_point() else
            {"bits": torch.from_numpy(np.packbits(v.numpy())), "shape": list(v.shape)}
            if v.dtype == torch.bool else v for k, v in state.items()}


def expand(state: dict) -> dict:
    """The state dict of ``compact`` (or a plain one) as modules hold it: float32, bools."""
    def one(v):
        if isinstance(v, dict):
            n = int(np.prod(v["shape"]))
            return torch.from_numpy(np.unpackbits(v["bits"].numpy(), count=n).astype(bool)
                                    .reshape(v["shape"]))
        return v.float() if v.is_floating_point() else v
    return {k: one(v) for k, v in state.items()}


def load_weights(path: str | Path) -> dict:
    """A torch file of tensors and plain data; anything that could run code is refused."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise FastShowerError(f"{path} was refused: it holds objects other than tensors and "
                              "plain data, and loading it could run code "
                              f"({str(err).splitlines()[-1][:200]})") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise FastShowerError(f"{path} is not a readable fastshower model file: "
                              f"{str(err).splitlines()[0][:200]}") from None


def load_model_file(run: str | Path) -> dict:
    """The exported model of a run folder (or a model.pt file), with a clear error."""
    path = Path(run)
    f = path / "model.pt" if path.is_dir() else path
    if not f.is_file():
        raise FastShowerError(f"no trained model at {f}: train one with `fastshower train`")
    return load_weights(f)


def read_history(run: str | Path) -> list[dict]:
    """A run folder's validation records (empty when there are none)."""
    f = Path(run) / "history.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []
