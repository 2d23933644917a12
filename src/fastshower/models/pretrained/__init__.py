"""Models trained by the project on its own Geant4 samples and shipped with the package
(see docs/models.md for how each was made and how well it does)."""

from __future__ import annotations

from pathlib import Path

from fastshower.errors import FastShowerError
from fastshower.models.files import compact, load_model_file, save_atomic

FOLDER = Path(__file__).parent


def pretrained(name: str) -> Path:
    """Path of the shipped model ``name`` (layerhits, flowgnn or parametric)."""
    path = FOLDER / f"{name}.pt"
    if not path.is_file():
        raise FastShowerError(f"no shipped model {name!r}; available: "
                              f"{', '.join(p.stem for p in sorted(FOLDER.glob('*.pt')))}")
    return path


def ship(run: str | Path, name: str) -> Path:
    """Copy a run's model into the package with its weights stored as float16 and its masks
    as bits (models.files.compact; restored to float32 and bools when loaded)."""
    saved = load_model_file(run)
    if "state_dict" in saved:
        saved["state_dict"] = compact(saved["state_dict"])
    saved["shipped_from"] = str(run)
    path = FOLDER / f"{name}.pt"
    save_atomic(saved, path)
    return path
