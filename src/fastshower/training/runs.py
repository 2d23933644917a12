"""Run folders: everything a training run produced, in one place, and nothing lost on a crash.

RUN/config.yaml (the resolved configuration), RUN/environment.json (package versions, git
commit, command line), RUN/history.jsonl (one line per validation), RUN/tensorboard/,
RUN/checkpoints/last.pt (everything to resume; written atomically: a temporary file renamed
over the old one), RUN/model.pt (the exported best model that ``generate`` loads).

Model files hold tensors and plain data only and are read with ``torch.load(weights_only=True)``:
a file whose unpickling would build other objects (and so could run code) is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml

from fastshower.errors import FastShowerError

PACKAGES = ("fastshower", "torch", "torch_geometric", "zuko", "numpy", "scipy", "uproot",
            "awkward", "geant4_pybind")


def git_commit() -> str | None:
    """The commit of the source tree fastshower runs from (None outside a git checkout)."""
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "python": sys.version.split()[0],
            "platform": platform.platform(), "git_commit": git_commit(),
            "command": sys.argv, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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


def read_history(run: str | Path) -> list[dict]:
    """A run folder's validation records (empty when there are none)."""
    f = Path(run) / "history.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


class RunFolder:
    """One training run. Created with its config; reopened with the same config to resume."""

    def __init__(self, path: str | Path, config: dict, write: bool = True):
        """``write=False``: open an existing run to read its checkpoints only (the other
        ranks of a data-parallel run)."""
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        saved = self.path / "config.yaml"
        if saved.is_file():
            old = yaml.safe_load(saved.read_text())
            if old != config:
                changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise FastShowerError(f"{self.path} holds a run with another configuration "
                                      f"(differs in: {', '.join(changed)}); use a new --out or "
                                      "the same settings to resume it")
        elif write:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            saved.write_text(yaml.safe_dump(config, sort_keys=False))
        if not write:
            return
        env = self.path / "environment.json"
        runs = json.loads(env.read_text()) if env.is_file() else []
        env.write_text(json.dumps([*runs, environment()], indent=2))

    @property
    def model_file(self) -> Path:
        return self.path / "model.pt"

    def load(self, name: str = "last") -> dict | None:
        f = self.checkpoints / f"{name}.pt"
        return load_weights(f) if f.is_file() else None

    def save(self, state: dict, name: str = "last") -> None:
        save_atomic(state, self.checkpoints / f"{name}.pt")

    def log(self, record: dict) -> None:
        with open(self.path / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict]:
        return read_history(self.path)

    def truncate_history(self, step: int) -> None:
        """Forget validations after ``step`` (they are redone after a resume)."""
        kept = [r for r in self.history() if r["step"] <= step]
        (self.path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def load_model_file(run: str | Path) -> dict:
    """The exported model of a run folder (or a model.pt file), with a clear error."""
    path = Path(run)
    f = path / "model.pt" if path.is_dir() else path
    if not f.is_file():
        raise FastShowerError(f"no trained model at {f}: train one with `fastshower train`")
    return load_weights(f)
