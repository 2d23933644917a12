"""Load test of `fastshower serve` on loopback: N requests from C concurrent clients (the
official Triton HTTP client, one per client thread), one shower per request, for each server
batching setting; prints throughput, p50/p99 latency and errors (must be 0), bounded in time.
Usage:
    python benchmarks/serve_load.py --model exports/flowgnn [--requests 1000 --clients 50]
        [--max-batch 1,8] [--threads 2] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from fastshower.inference.serve import client_inputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, n_requests: int, clients: int, deadline: float) -> dict:
    import tritonclient.http as http

    rng = np.random.default_rng(0)
    energies = np.exp(rng.uniform(np.log(5e3), np.log(100e3), n_requests))
    per_client = np.array_split(np.arange(n_requests), clients)

    def client_loop(indices):
        client = http.InferenceServerClient(url, connection_timeout=120, network_timeout=600)
        latencies, errors, batches = [], 0, []
        for i in indices:
            if time.perf_counter() > deadline:
                errors += 1  # not sent in time: counted as failed
                continue
            start = time.perf_counter()
            try:
                r = client.infer("fastshower", client_inputs(energies[i], 22, seed=int(i)))
                r.as_numpy("hit_energy")
                latencies.append(time.perf_counter() - start)
                batches.append(r.get_response()["parameters"]["batch_showers"])
            except Exception:  # noqa: BLE001 - every failure counts
                errors += 1
        return latencies, errors, batches

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_loop, idx) for idx in per_client]
        wait(futures)
    elapsed = time.perf_counter() - start
    latencies = np.concatenate([f.result()[0] for f in futures])
    batches = np.concatenate([f.result()[2] for f in futures])
    errors = sum(f.result()[1] for f in futures)
    return {"requests": n_requests, "clients": clients, "seconds": elapsed,
            "completed": int(len(latencies)), "errors": int(errors),
            "throughput_per_s": len(latencies) / elapsed,
            "latency_p50_s": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "latency_p99_s": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "mean_batch_showers": float(batches.mean()) if len(batches) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="export folder (fastshower export-model)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-batch", default="1,8", help="server batching settings to compare")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per setting")
    ap.add_argument("--geometry", default="data/geometry/hgcal_roi.h5")
    ap.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = ap.parse_args()
    results = []
    for max_batch in (int(b) for b in args.max_batch.split(",")):
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fastshower", "serve", "--model", args.model, "--port",
             str(port), "--geometry", args.geometry, "--threads", str(args.threads),
             "--max-batch", str(max_batch)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            r = load(f"127.0.0.1:{port}", args.requests, args.clients,
                     time.perf_counter() + args.timeout)
        finally:
            server.terminate()
            server.wait(30)
        r.update({"max_batch": max_batch, "threads": args.threads})
        results.append(r)
        print(f"max batch {max_batch:3d}: {r['completed']}/{r['requests']} requests in "
              f"{r['seconds']:.1f} s = {r['throughput_per_s']:.1f} showers/s; latency p50 "
              f"{r['latency_p50_s']:.2f} s, p99 {r['latency_p99_s']:.2f} s; errors "
              f"{r['errors']}; mean batch {r['mean_batch_showers']:.1f} showers")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "results": results}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
