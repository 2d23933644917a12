"""Data-parallel training throughput: a generator's (default FlowGNN) steps per second with 1
and N processes
(torchrun, gloo on CPU, one thread each), each rank taking a full mini-batch per step (weak
scaling, batch_per_rank), and one process with N threads for comparison; prints the scaling
efficiency (N-process throughput over N times the 1-process one). Times are the training loop's
own (history elapsed_s, data loading and validation excluded). Usage:
    python benchmarks/ddp.py --data samples/train/e-,samples/train/gamma [--procs 1,2]
        [--steps 60] [--model gan3d --config configs/train/gan3d.yaml
                      --geometry data/geometry/clic_grid.h5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(model: list[str], data: str, geometry: str, procs: int, threads: int, steps: int,
        out: Path) -> float:
    """Training steps per second (rank 0's loop time); ``model``: the train command's model
    and config options."""
    args = ["-m", "fastshower", "train", *model, "--data", data, "--geometry", geometry, "--out",
            str(out), "--set", f"max_steps={steps}", "--set", f"val_every={steps}", "--set",
            "val_showers=20", "--set", "batch_per_rank=true"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    record = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    return record["step"] / record["elapsed_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--geometry", default="data/geometry/hgcal_roi.h5")
    ap.add_argument("--model", default="flowgnn")
    ap.add_argument("--config", help="YAML training config (default: the model's defaults)")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/ddp.json")
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    model = ["--model", args.model, *(["--config", args.config] if args.config else [])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = run(model, args.data, args.geometry, 1, 1, args.steps, Path(tmp) / "p1t1")
        rows.append({"processes": 1, "threads": 1, "steps_per_s": base, "efficiency": 1.0})
        for n in procs[1:]:
            for p, t in ((n, 1), (1, n)):
                rate = run(model, args.data, args.geometry, p, t, args.steps,
                           Path(tmp) / f"p{p}t{t}")
                # showers per step grow with the processes (each takes a full mini-batch)
                throughput = rate * p
                rows.append({"processes": p, "threads": t, "steps_per_s": rate,
                             "efficiency": throughput / (n * base)})
    for r in rows:
        print(f"{r['processes']} process(es) x {r['threads']} thread(s): {r['steps_per_s']:.2f} "
              f"steps/s, {r['processes'] * r['steps_per_s']:.2f} mini-batches/s -> scaling "
              f"efficiency {100 * r['efficiency']:.0f} %")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "config": args.config,
                                          "steps": args.steps, "cpus": os.cpu_count(),
                                          "rows": rows}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
