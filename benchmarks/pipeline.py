"""Data pipeline speed and memory, measured side by side in one run.

- transform: showers/s of the vectorised chunk transform against a naive per-event Python
  version of the same transform (same output), on the same showers;
- preprocess end to end (read ROOT -> graphs -> shards) with 1 and 2 worker processes;
- peak RSS of preprocessing N and 10 N showers (each in a fresh process);
- time to the first training batch from the cache.

Usage: python benchmarks/pipeline.py --sample DIR --geometry G [--n 2000]
(DIR: a production folder of sim-hit files, e.g. from `fastshower simulate`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import awkward as ak

from fastshower.data.cache import batches, preprocess
from fastshower.data.transform import TransformConfig, to_graphs
from fastshower.geometry import load
from fastshower.simhits import read_sample


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


def _preprocess_rss(args: tuple) -> float:
    sample, geometry, out = args
    preprocess(sample, geometry, out, show_progress=False)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", required=True)
    ap.add_argument("--geometry", required=True)
    ap.add_argument("--repeat", type=int, default=10, help="copies of the sample for 10 N")
    ap.add_argument("--out", default="benchmarks/results/pipeline.json")
    args = ap.parse_args()
    geom = load(args.geometry)
    batch, _ = read_sample(args.sample)
    hits = float(ak.mean(ak.num(batch.cell_id)))
    cfg = TransformConfig()

    to_graphs(batch.subset(slice(0, 10)), geom, cfg)  # warm-up
    t = time.perf_counter()
    to_graphs(batch, geom, cfg)
    fast = len(batch) / (time.perf_counter() - t)
    sub = batch.subset(slice(0, 200))
    t = time.perf_counter()
    naive_transform(sub, geom)
    naive = len(sub) / (time.perf_counter() - t)

    tmp = Path(tempfile.mkdtemp())
    rates = {}
    for workers in (1, 2):
        t = time.perf_counter()
        folder = preprocess(args.sample, args.geometry, tmp / f"w{workers}", workers=workers,
                            show_progress=False)
        rates[workers] = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    next(iter(batches(folder, "train", batch_size=64)))
    first_batch = time.perf_counter() - t

    big = tmp / "big"
    big.mkdir()
    for i in range(args.repeat):  # 10 N: the same files again under other names
        for f in sorted(Path(args.sample).glob("*.root")):
            shutil.copy(f, big / f"{i:02d}_{f.name}")
    rss = {}
    for name, sample in (("N", args.sample), (f"{args.repeat}N", str(big))):
        with mp.get_context("spawn").Pool(1) as pool:
            rss[name] = pool.apply(_preprocess_rss, ((sample, args.geometry, tmp / name),))

    result = {"showers": len(batch), "mean_hits": hits,
              "transform_showers_per_s": fast, "naive_showers_per_s": naive,
              "speedup_vs_naive": fast / naive,
              "preprocess_showers_per_s": {str(k): v for k, v in rates.items()},
              "time_to_first_batch_s": first_batch, "peak_rss_mb": rss}
    print(json.dumps(result, indent=2))
    print(f"transform {fast:.0f} showers/s vs naive {naive:.0f} -> x{fast / naive:.0f}; "
          f"preprocess {rates[1]:.0f} (1 worker) / {rates[2]:.0f} (2 workers) showers/s; "
          f"peak RSS {rss['N']:.0f} MB (N) vs {rss[f'{args.repeat}N']:.0f} MB "
          f"({args.repeat} N); first batch in {first_batch:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
