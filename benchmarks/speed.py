"""Time per shower of each trained generator against Geant4, for the same incident energies, on
this machine's CPU, in one run; each model with PyTorch or with ONNX Runtime, on 1 thread and on
more (--threads).

Geant4 runs the project's simulation (offline EM physics, default cell scoring, ROOT output)
in a fresh process; each model runs in a fresh process too, at batch sizes 1, 100 and 1000:
the first call (warm-up) is reported apart, then calls repeat for at least --seconds. Model
times include placing the deposits on the geometry's cells (what `generate` writes). Peak
memory is the process's maximum resident set size. FLOPs per shower are those of the torch
operations (torch.utils.flop_counter: matrix products, the bulk of a network's work), not the
numpy placement; none for ONNX Runtime. A model given as onnx:FOLDER is an export
folder run by ONNX Runtime. Times are wall-clock per shower; "per core" divides the Geant4 CPU
time by (wall time x threads), so more threads only help where they make more showers per
core-second.
Usage:
    python benchmarks/speed.py --runs runs/flowgnn,onnx:exports/flowgnn [--energies 10,100]
        [--threads 1,2]
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


def geant4_seconds(geometry: str, gun: dict, n: int) -> float:
    from fastshower.simulation.runner import JobSpec, run_job

    with tempfile.TemporaryDirectory() as tmp:
        spec = JobSpec(geometry=geometry, gun=gun, n=n, seed=7, out=str(Path(tmp) / "g4.root"))
        with mp.get_context("spawn").Pool(1) as pool:
            result = pool.apply(run_job, (spec,))
    return result["cpu_seconds"] / result["n"]


def model_timings(run: str, geometry: str, gun: dict, batches: list[int], seconds: float,
                  threads: int) -> dict:
    """In a fresh process: warm-up and steady time per shower at each batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    from fastshower.geometry import load
    from fastshower.inference.generate import load_generator
    from fastshower.simulation.gun import GunConfig, sample_primaries

    backend, path = run.split(":", 1) if run.startswith("onnx:") else ("torch", run)
    generator = load_generator(path, load(geometry), backend, threads=threads)
    params = (sum(p.numel() for p in generator.parameters())
              if isinstance(generator, torch.nn.Module) else None)
    size = sum(f.stat().st_size for f in Path(path).glob("model.*")) if Path(path).is_dir() \
        else Path(path).stat().st_size
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for b in batches:
        primaries = sample_primaries(GunConfig(**gun), b, np.random.default_rng(b))
        start = time.perf_counter()
        generator.sample(primaries, np.random.default_rng(0))
        warmup = time.perf_counter() - start
        times, cpu = [], []
        while sum(times) < seconds or not times:
            start, start_cpu = time.perf_counter(), time.process_time()
            generator.sample(primaries, np.random.default_rng(len(times) + 1))
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        flops = None
        if backend == "torch":  # after the memory reading: counting holds on to tensors
            with FlopCounterMode(display=False) as counter:
                generator.sample(primaries, np.random.default_rng(0))
            flops = counter.get_total_flops() / b
        rows.append({"batch": b, "warmup_s_per_shower": warmup / b,
                     "s_per_shower": float(np.median(times)) / b,
                     "cpu_s_per_shower": float(np.median(cpu)) / b, "calls": len(times),
                     "flops_per_shower": flops, "peak_rss_mb": peak})
    return {"model": generator.name, "backend": backend, "run": path, "threads": threads,
            "parameters": params, "model_bytes": size, "rss_after_load_mb": rss_loaded,
            "batches": rows}


def energy_setting(text: str) -> dict:
    """'100' -> a fixed energy; '10:510' -> uniform between the two (GeV; the record's
    energy_gev is then None, its gun says the range)."""
    if ":" in text:
        return {"energy": [float(e) for e in text.split(":")], "spectrum": "uniform"}
    return {"energy": [float(text)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, help="comma-separated run folders or model files")
    ap.add_argument("--energies", default="10,100",
                    help="GeV, comma-separated; LO:HI is a uniform spectrum (Geant4 and the "
                         "model draw the same primaries' law)")
    ap.add_argument("--particle", default="gamma")
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--g4-n", type=int, default=10, help="Geant4 showers per energy")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts")
    ap.add_argument("--geometry", default=str(GEOMETRY))
    ap.add_argument("--gun", default="{}", help='more gun settings as JSON, e.g. for the grid: '
                    '\'{"theta_deg": [0, 30], "phi_deg": [0, 360], "aim_mm": [0, 0, 1500]}\'')
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for energy in args.energies.split(","):
        setting = energy_setting(energy)
        fixed = None if "spectrum" in setting else setting["energy"][0]
        gun = {**json.loads(args.gun), "particle": args.particle, **setting}
        g4 = geant4_seconds(args.geometry, gun, args.g4_n)
        print(f"{args.particle} {energy} GeV: Geant4 {1e3 * g4:.1f} ms/shower (CPU, n="
              f"{args.g4_n})")
        for run in args.runs.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                with mp.get_context("spawn").Pool(1) as pool:
                    m = pool.apply(model_timings, (run, args.geometry, gun, batches,
                                                   args.seconds, threads))
                label = f"{m['model']}/{m['backend']}/{threads}t"
                for row in m["batches"]:
                    row["speedup_vs_geant4_per_core"] = g4 / (row["s_per_shower"] * threads)
                    ms, warm = 1e3 * row["s_per_shower"], 1e3 * row["warmup_s_per_shower"]
                    print(f"  {label:22s} batch {row['batch']:5d}: {ms:8.2f} ms/shower (warm-up "
                          f"{warm:8.2f}) -> {row['speedup_vs_geant4_per_core']:7.1f}x Geant4 per "
                          f"core; peak RSS {row['peak_rss_mb']:.0f} MB; model "
                          f"{m['model_bytes'] / 1e6:.1f} MB, {m['parameters'] or 0:,} parameters, "
                          f"{(row['flops_per_shower'] or 0) / 1e6:.2f} MFLOP/shower")
                results.append({"particle": args.particle, "energy_gev": fixed, "gun": gun,
                                "geant4_s_per_shower": g4, "geant4_n": args.g4_n, **m})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
