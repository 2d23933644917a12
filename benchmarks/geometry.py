"""Build the full HGCAL-like detector (both endcaps) and its neighbour graph: time and peak memory.

Usage: python benchmarks/geometry.py [--out benchmarks/results/geometry.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from fastshower.geometry import EDGE_KINDS, build_geometry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results/geometry.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    geom = build_geometry("hgcal", {"region": "full"}, neighbours=False)
    t_cells = time.perf_counter() - t0
    geom.build_neighbours()
    t_total = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    # Lookup speed on random points spread over the detector's layers.
    rng = np.random.default_rng(1)
    n = 2_000_000
    layer = rng.integers(0, len(geom.layers), n)
    r = rng.uniform(300, 2400, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    x, y = r * np.cos(phi), r * np.sin(phi)
    t1 = time.perf_counter()
    ids = geom.lookup(layer, x, y)
    t_lookup = time.perf_counter() - t1

    result = {
        "n_cells": geom.n_cells,
        "n_cells_by_type": np.bincount(geom.cells["type"], minlength=2).tolist(),
        "n_edges_by_kind": {EDGE_KINDS[k]: int(v) for k, v in
                            enumerate(np.bincount(geom.edge_kind, minlength=4))},
        "seconds_cells": round(t_cells, 2),
        "seconds_total": round(t_total, 2),
        "peak_rss_gb": round(rss_gb, 2),
        "lookup_points_per_second": round(n / t_lookup),
        "lookup_fraction_outside": float((ids < 0).mean()),
    }
    print(json.dumps(result, indent=2))
    print(f"full detector: {geom.n_cells / 1e6:.2f} M cells, built with neighbours in "
          f"{t_total:.1f} s (limit 120 s), peak RSS {rss_gb:.2f} GB (limit 8 GB); "
          f"lookup {n / t_lookup / 1e6:.1f} M points/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
