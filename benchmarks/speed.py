"""Time per shower of each trained generator against Geant4, for the same incident energies, on
one CPU thread of this machine, in one run.

Geant4 runs the project's simulation (offline EM physics, step scoring, ROOT output) in a fresh
process; each model runs in a fresh process too, at batch sizes 1, 100 and 1000: the first call
(warm-up) is reported apart, then calls repeat for at least --seconds. Model times include
placing the deposits on the geometry's cells (what `generate` writes). Peak memory is the
process's maximum resident set size. Usage:
    python benchmarks/speed.py --runs runs/flowgnn,runs/parametric [--energies 10,100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

GEOMETRY = Path("data/geometry/hgcal_roi.h5")


def geant4_seconds(geometry: str, particle: str, energy: float, n: int) -> float:
    from fastshower.simulation.runner import JobSpec, run_job

    with tempfile.TemporaryDirectory() as tmp:
        spec = JobSpec(geometry=geometry, gun={"particle": particle, "energy": [energy]}, n=n,
                       seed=7, out=str(Path(tmp) / "g4.root"))
        with mp.get_context("spawn").Pool(1) as pool:
            result = pool.apply(run_job, (spec,))
    return result["cpu_seconds"] / result["n"]


def model_timings(run: str, geometry: str, particle: str, energy: float, batches: list[int],
                  seconds: float) -> dict:
    """In a fresh process: warm-up and steady time per shower at each batch size."""
    import torch

    torch.set_num_threads(1)
    from fastshower.geometry import load
    from fastshower.inference.generate import Generator
    from fastshower.simulation.gun import GunConfig, sample_primaries

    generator = Generator(run, load(geometry))
    params = (sum(p.numel() for p in generator.model.parameters())
              if hasattr(generator.model, "parameters") else None)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for b in batches:
        primaries = sample_primaries(GunConfig(particle=particle, energy=[energy]), b,
                                     np.random.default_rng(b))
        start = time.process_time()
        generator.generate(primaries, seed=0)
        warmup = time.process_time() - start
        times = []
        while sum(times) < seconds or len(times) < 2:
            start = time.process_time()
            generator.generate(primaries, seed=len(times) + 1)
            times.append(time.process_time() - start)
        rows.append({"batch": b, "warmup_s_per_shower": warmup / b,
                     "s_per_shower": float(np.median(times)) / b, "calls": len(times),
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return {"model": generator.name, "run": run, "parameters": params,
            "rss_after_load_mb": rss_loaded, "batches": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, help="comma-separated run folders or model files")
    ap.add_argument("--energies", default="10,100", help="GeV")
    ap.add_argument("--particle", default="gamma")
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--g4-n", type=int, default=10, help="Geant4 showers per energy")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    ap.add_argument("--geometry", default=str(GEOMETRY))
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for energy in (float(e) for e in args.energies.split(",")):
        g4 = geant4_seconds(args.geometry, args.particle, energy, args.g4_n)
        print(f"{args.particle} {energy:g} GeV: Geant4 {1e3 * g4:.1f} ms/shower (CPU, n="
              f"{args.g4_n})")
        for run in args.runs.split(","):
            with mp.get_context("spawn").Pool(1) as pool:
                m = pool.apply(model_timings, (run, args.geometry, args.particle, energy,
                                               batches, args.seconds))
            for row in m["batches"]:
                row["speedup_vs_geant4"] = g4 / row["s_per_shower"]
                ms, warm = 1e3 * row["s_per_shower"], 1e3 * row["warmup_s_per_shower"]
                print(f"  {m['model']:10s} batch {row['batch']:5d}: {ms:8.2f} ms/shower "
                      f"(warm-up {warm:8.2f}) -> {row['speedup_vs_geant4']:7.1f}x Geant4; peak RSS "
                      f"{row['peak_rss_mb']:.0f} MB")
            results.append({"particle": args.particle, "energy_gev": energy,
                            "geant4_s_per_shower": g4, "geant4_n": args.g4_n, **m})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": 1, "results": results}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
