"""Run folders: everything a training run produced, in one place, and nothing lost on a crash.

RUN/config.yaml (the resolved configuration), RUN/environment.json (package versions, git
commit, command line), RUN/history.jsonl (one line per validation), RUN/tensorboard/,
RUN/checkpoints/last.pt (everything to resume; written atomically: a temporary file renamed
over the old one), RUN/model.pt (the exported best model that ``generate`` loads).

Model files are written and read by fastshower.models.files (tensors and plain data only).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from fastshower.errors import FastShowerError
from fastshower.models.files import load_weights, read_history, save_atomic
from fastshower.simhits import sample_files

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








def data_files(data: str, out: str | Path) -> list[str]:
    """The files of the sample ``data`` (comma-separated specs) a run at ``out`` trains on,
    fixed when it starts: resumed, it reads the files it started with even if the production
    it reads has grown since (the run's config records them)."""
    files = [str(f) for f in sample_files(data)]
    saved = Path(out) / "config.yaml"
    if saved.is_file():
        started = yaml.safe_load(saved.read_text()).get("data_files")
        if started and set(started) <= set(files):
            return started
    return files


class RunFolder:
    """One training run. Created with its config; reopened with the same config to resume."""

    def __init__(self, path: str | Path, config: dict, write: bool = True):
        """``write=False``: open an existing run to read its checkpoints only (the other
        ranks of a data-parallel run)."""
        self.path, self.config = Path(path), config
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

