"""Geant4 CPU time per shower against particle and energy, and the cost of cell scoring.

Each configuration runs three times in fresh processes on the same core, one after the other:
without scoring (same geometry and physics, no sensitive detector), with cells as Geant4 volumes
scored in C++, and with every charged sensor step sent to Python and looked up. Scored runs
include aggregation and writing the ROOT file. The same seed gives the same showers in every
mode, and the modes alternate --repeats times; medians are reported. Usage:
    python benchmarks/geant4.py [--n 20] [--energies 10,50] [--particles e-,gamma]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
from pathlib import Path

import numpy as np

from fastshower.geometry import build_geometry, save
from fastshower.simulation.runner import JobSpec, run_job


def _timed(spec: JobSpec) -> dict:
    return run_job(spec)


def run(spec: JobSpec) -> float:
    """CPU seconds per shower in a fresh process (Geant4 allows one run manager per process)."""
    with mp.get_context("spawn").Pool(1) as pool:
        result = pool.apply(_timed, (spec,))
    return result["cpu_seconds"] / result["n"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--energies", default="10,50")
    ap.add_argument("--particles", default="e-,gamma")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternate the modes this many times; the median is reported")
    ap.add_argument("--out", default="benchmarks/results/geant4.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    geometry = save(build_geometry("hgcal"), tmp / "geometry.h5")
    rows = []
    for particle in args.particles.split(","):
        for energy in (float(e) for e in args.energies.split(",")):
            spec = dict(geometry=str(geometry), gun={"particle": particle, "energy": [energy]},
                        n=args.n, seed=7, out=str(tmp / f"{particle}_{energy}.root"))
            runs: dict[str, list[float]] = {"none": [], "cells": [], "steps": []}
            for _ in range(args.repeats):  # alternating: slow drifts of the machine cancel
                for mode, times in runs.items():
                    times.append(run(JobSpec(**spec, scoring=mode)))
            t = {mode: float(np.median(times)) for mode, times in runs.items()}
            rows.append({"particle": particle, "energy_gev": energy, "n": args.n,
                         **{f"cpu_s_per_shower_{m}": v for m, v in t.items()},
                         "all_runs": runs,
                         "overhead_cells": t["cells"] / t["none"] - 1,
                         "overhead_steps": t["steps"] / t["none"] - 1})
            print(f"{particle:6s} {energy:6.0f} GeV: {t['none']:.3f} s/shower unscored; "
                  f"scoring overhead: cell volumes (C++) {100 * rows[-1]['overhead_cells']:+.1f} "
                  f"%, Python steps + lookup {100 * rows[-1]['overhead_steps']:+.1f} %",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
