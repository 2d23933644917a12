"""Geant4 CPU time per shower against particle and energy, and the cost of cell scoring.

Each configuration runs --repeats times in fresh processes on the same core, alternating the
modes: without scoring (same geometry and physics, no sensitive detector), with cells as
Geant4 volumes scored in C++, and with every charged sensor step sent to Python and looked up.
Scored runs include reading the hits, aggregation and writing the ROOT file. The same seed
gives the same primaries in every mode.

Times are per-event CPU timestamps inside the job: the first --warmup events (first-touch
costs: navigation voxels, physics-table caches) are reported separately and the steady state
is measured on the rest, so process start-up and table building do not dilute the ratio.
Usage:
    python benchmarks/geant4.py [--n 40] [--warmup 8] [--energies 10,50] [--particles e-,gamma]
        [--geometry hgcal|grid|FILE] [--eta 2.0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from fastshower.geometry import build_geometry, load, save
from fastshower.simulation.runner import JobSpec, run_job

MODES = ("none", "cells", "steps")


def _timed(spec: JobSpec) -> list[float]:
    stamps = [time.process_time()]
    run_job(spec, report=lambda _: stamps.append(time.process_time()))
    return stamps


def run(spec: JobSpec, warmup: int) -> dict:
    """CPU seconds per shower, steady state and warm-up, in a fresh process (Geant4 allows one
    run manager per process)."""
    with mp.get_context("spawn").Pool(1) as pool:
        t = np.array(pool.apply(_timed, (spec,)))
    return {"steady": float((t[-1] - t[warmup]) / (len(t) - 1 - warmup)),
            "warmup": float((t[warmup] - t[0]) / warmup)}


def geometry_file(name: str, folder: Path) -> Path:
    if Path(name).is_file():
        return Path(name)
    path = folder / f"{name}.h5"
    save(build_geometry(name), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--energies", default="10,50")
    ap.add_argument("--particles", default="e-,gamma")
    ap.add_argument("--geometry", default="hgcal")
    ap.add_argument("--eta", type=float, default=2.0, help="gun direction (the CLIC-like grid "
                    "built by default sits at eta 4-5)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternate the modes this many times; the median is reported")
    ap.add_argument("--out", default="benchmarks/results/geant4.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    geometry = geometry_file(args.geometry, tmp)
    rows = []
    for particle in args.particles.split(","):
        for energy in (float(e) for e in args.energies.split(",")):
            spec = dict(geometry=str(geometry), gun={"particle": particle, "energy": [energy],
                                                     "eta": [args.eta, args.eta]},
                        n=args.n, seed=7, out=str(tmp / f"{particle}_{energy}.root"))
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            for _ in range(args.repeats):  # alternating: slow drifts of the machine cancel
                for mode, times in runs.items():
                    Path(spec["out"]).unlink(missing_ok=True)
                    times.append(run(JobSpec(**spec, scoring=mode), args.warmup))
            t = {m: float(np.median([r["steady"] for r in runs[m]])) for m in MODES}
            spread = {m: float(np.ptp([r["steady"] for r in runs[m]]) / t[m]) for m in MODES}
            warm = {m: float(np.median([r["warmup"] for r in runs[m]])) for m in MODES}
            rows.append({"particle": particle, "energy_gev": energy, "n": args.n,
                         "warmup_events": args.warmup, "geometry": load(geometry).builder,
                         **{f"cpu_s_per_shower_{m}": v for m, v in t.items()},
                         **{f"warmup_cpu_s_per_shower_{m}": v for m, v in warm.items()},
                         **{f"relative_spread_{m}": v for m, v in spread.items()},
                         "all_runs": runs,
                         "overhead_cells": t["cells"] / t["none"] - 1,
                         "overhead_steps": t["steps"] / t["none"] - 1})
            print(f"{particle:6s} {energy:6.0f} GeV: {t['none']:.3f} s/shower unscored "
                  f"(spread {100 * spread['none']:.1f} %); scoring overhead: cell volumes (C++) "
                  f"{100 * rows[-1]['overhead_cells']:+.1f} %, Python steps + lookup "
                  f"{100 * rows[-1]['overhead_steps']:+.1f} %; first {args.warmup} events: "
                  + ", ".join(f"{m} {warm[m]:.3f}" for m in MODES) + " s/shower", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
