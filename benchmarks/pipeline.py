"""Data pipeline speed and memory, measured side by side in one run.

- read: ROOT -> awkward arrays (uproot), chunks of 500 showers;
- transform: the vectorised chunk transform (selection, features, edges) against a naive
  per-event Python version of the same transform (checked to give the same graphs), on the
  same showers in memory;
- preprocess end to end (read -> transform -> shards) with 1 and 2 worker processes, on the
  sample repeated --copies times, and without start-up: the rate of the extra showers of
  --copies over --copies / 2 copies;
- batches: scaled torch_geometric batches streamed from the cache (shuffled), and the time
  to the first batch;
- peak RSS of preprocessing N and --repeat x N showers (each in a fresh process).

Usage: python benchmarks/pipeline.py --sample DIR --geometry G [--copies 4] [--repeat 10]
(DIR: a production folder of sim-hit files, e.g. from `fastshower simulate`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fastshower.data.splits import file_sizes
from fastshower.data.transform import TransformConfig, to_chunk
from fastshower.geometry import load
from fastshower.simhits import read_showers, sample_files

# torch is imported inside main(): spawned preprocessing workers re-import this module, and
# a worker of `fastshower preprocess` does not import torch either

CHUNK = 500


def naive_transform(batch, geom, threshold_mip: float = 0.5) -> list[tuple]:
    """The same transform, one shower and one hit at a time (the baseline)."""
    mip = geom.mip_energy
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(*geom.edges.tolist(), strict=True):
        neighbours.setdefault(a, []).append(b)
    out = []
    for i in range(len(batch)):
        cells: dict[int, float] = {}
        for cid, e in zip(batch.cell_id[i].tolist(), batch.cell_energy[i].tolist(),
                          strict=True):
            cells[cid] = cells.get(cid, 0.0) + e
        hits = sorted(c for c, e in cells.items() if e > threshold_mip * mip[c])
        index = {c: k for k, c in enumerate(hits)}
        feats = [[cells[c], geom.cells["x"][c], geom.cells["y"][c], geom.cells["z"][c],
                  geom.cells["layer"][c], geom.cells["type"][c], geom.cells["area"][c] ** 0.5]
                 for c in hits]
        edges = [(index[c], index[n]) for c in hits for n in neighbours.get(c, [])
                 if n in index]
        out.append((feats, edges))
    return out


def same_graphs(naive: list[tuple], chunk) -> bool:
    for i, (feats, edges) in enumerate(naive):
        lo, hi = chunk.node_ptr[i], chunk.node_ptr[i + 1]
        ours = chunk.edge_index[:, chunk.edge_ptr[i]:chunk.edge_ptr[i + 1]].T.tolist()
        if not (np.allclose(np.array(feats, np.float32).reshape(-1, 7), chunk.x[lo:hi])
                and sorted(map(tuple, ours)) == sorted(edges)):
            return False
    return True


def _preprocess_rss(args: tuple) -> float:
    from fastshower.data.cache import preprocess

    sample, geometry, out = args
    preprocess(sample, geometry, out, show_progress=False)
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's size across exec
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return int(status.split()[0]) / 1024


def copies(sample: str, folder: Path, k: int) -> Path:
    """The sample's files ``k`` times under other names (more showers, same content)."""
    folder.mkdir(parents=True)
    for i in range(k):
        for f in sample_files(sample):
            shutil.copy(f, folder / f"{i:02d}_{f.name}")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", required=True)
    ap.add_argument("--geometry", required=True)
    ap.add_argument("--copies", type=int, default=40, help="sample copies for preprocessing")
    ap.add_argument("--repeat", type=int, default=10, help="copies of the sample for 10 N")
    ap.add_argument("--naive", type=int, default=40, help="showers for the naive transform")
    ap.add_argument("--out", default="benchmarks/results/pipeline.json")
    args = ap.parse_args()
    from fastshower.data.cache import batches, preprocess

    geom = load(args.geometry)
    cfg = TransformConfig()

    t = time.perf_counter()
    files = sample_files(args.sample)
    chunks = [read_showers(f, lo, min(lo + CHUNK, n))
              for f, n in zip(files, file_sizes(files, geom), strict=True)
              for lo in range(0, n, CHUNK)]
    read_time = time.perf_counter() - t
    n_showers = sum(len(c) for c in chunks)
    to_chunk(chunks[0], geom, cfg)  # warm-up: the compiled edge loop, cached tables
    passes = []
    for _ in range(3):
        t = time.perf_counter()
        graphs = [to_chunk(c, geom, cfg) for c in chunks]
        passes.append(time.perf_counter() - t)
    transform_time = float(np.median(passes))
    hits = sum(len(g.x) for g in graphs) / n_showers
    edges = sum(g.edge_index.shape[1] for g in graphs) / n_showers
    sub = chunks[0].subset(slice(0, args.naive))
    t = time.perf_counter()
    naive = naive_transform(sub, geom)
    naive_rate = len(sub) / (time.perf_counter() - t)
    assert same_graphs(naive, graphs[0]), "the naive and vectorised transforms disagree"
    fast_rate = n_showers / transform_time

    tmp = Path(tempfile.mkdtemp())
    samples = {k: copies(args.sample, tmp / f"copies{k}", k) for k in (args.copies // 2,
                                                                        args.copies)}
    seconds = {}
    for workers in (1, 2):
        for k, sample in samples.items():
            t = time.perf_counter()
            folder = preprocess(sample, args.geometry, tmp / f"w{workers}_{k}",
                                workers=workers, show_progress=False)
            seconds[workers, k] = time.perf_counter() - t
    half, full = sorted(samples)
    rates = {w: n_showers * full / seconds[w, full] for w in (1, 2)}
    # the second half of the showers alone: start-up (worker processes, numba) cancels
    steady = {w: n_showers * (full - half) / (seconds[w, full] - seconds[w, half])
              for w in (1, 2)}
    t = time.perf_counter()
    loader = iter(batches(folder, "train", batch_size=64, shuffle=True, seed=1))
    next(loader)
    first_batch = time.perf_counter() - t
    t = time.perf_counter()
    streamed = sum(b.num_graphs for b in batches(folder, "train", batch_size=64, shuffle=True,
                                                 seed=2))
    batch_rate = streamed / (time.perf_counter() - t)

    rss = {}
    ten = copies(args.sample, tmp / "ten", args.repeat)
    for name, sample in (("N", args.sample), (f"{args.repeat}N", str(ten))):
        with mp.get_context("spawn").Pool(1) as pool:
            rss[name] = pool.apply(_preprocess_rss, ((sample, args.geometry, tmp / name),))

    result = {"showers": n_showers, "mean_hits": hits, "mean_edges": edges,
              "read_showers_per_s": n_showers / read_time,
              "transform_showers_per_s": fast_rate, "transform_us_per_hit":
                  transform_time / (hits * n_showers) * 1e6,
              "naive_showers_per_s": naive_rate, "speedup_vs_naive": fast_rate / naive_rate,
              "end_to_end_showers_per_s_vs_naive": 1 / (1 / fast_rate + read_time / n_showers)
                  / naive_rate,
              "preprocess_showers": n_showers * args.copies,
              "preprocess_showers_per_s": {str(k): v for k, v in rates.items()},
              "preprocess_steady_showers_per_s": {str(k): v for k, v in steady.items()},
              "batches_showers_per_s": batch_rate, "time_to_first_batch_s": first_batch,
              "peak_rss_mb": rss}
    print(json.dumps(result, indent=2))
    print(f"{n_showers} showers, {hits:.0f} hits and {edges:.0f} edges each: read "
          f"{result['read_showers_per_s']:.0f} showers/s; transform {fast_rate:.0f} showers/s "
          f"({result['transform_us_per_hit']:.3f} us/hit) vs naive {naive_rate:.0f} -> "
          f"x{fast_rate / naive_rate:.0f} (read + transform x"
          f"{result['end_to_end_showers_per_s_vs_naive']:.0f}); preprocess {rates[1]:.0f} "
          f"(1 worker) / {rates[2]:.0f} (2 workers) showers/s; batches {batch_rate:.0f} "
          f"showers/s, first in {first_batch:.2f} s; peak RSS {rss['N']:.0f} MB (N) vs "
          f"{rss[f'{args.repeat}N']:.0f} MB ({args.repeat} N)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
