"""Which observables give a generator away: the classifier test (AUC, 5 folds) of Geant4 against
generated showers on groups of the high-level observables, each with the visible energy (which
carries the primary's energy), beside all of them and Geant4's own floor (two halves); and how
the shower's depth goes with the rest at fixed energy and angle (correlations of the residuals
of a quadratic fit in ln E and theta, and the depth's residual spread): in Geant4 a shower that
develops late is wider, has fewer hits and a smaller core.

    python benchmarks/observable_groups.py --data samples/grid/heldout/e- --runs RUN[,RUN...] \
        --geometry data/geometry/clic_grid.h5 --out benchmarks/results/groups.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastshower.geometry.detector import load
from fastshower.inference.generate import load_generator
from fastshower.simhits import read_sample
from fastshower.validation.metrics import classifier_test, halves
from fastshower.validation.observables import high_level

GROUPS = {  # each with e_vis
    "energy": ["response", "e_dedx_over_e_inc"],
    "longitudinal": ["centroid_depth_x0", "start_layer", "max_layer"],
    "lateral": ["width_r", "core_fraction", "centre_x", "centre_y"],
    "hits": ["n_hits"],
    "depth and hits": ["centroid_depth_x0", "n_hits"],
}
WITH_DEPTH = ("n_hits", "width_r", "core_fraction", "max_layer", "response")


def depth_relations(h: dict, e_inc: np.ndarray, theta: np.ndarray) -> dict[str, float]:
    """Correlations of the centroid's residual with those of WITH_DEPTH, and the centroid's
    residual spread (X0); residuals from a least-squares fit in (1, ln E, ln² E, theta, theta²)."""
    a = np.stack([np.ones_like(e_inc), np.log(e_inc), np.log(e_inc) ** 2, theta, theta ** 2], 1)

    def residual(y):
        return y - a @ np.linalg.lstsq(a, y, rcond=None)[0]

    depth = residual(h["centroid_depth_x0"])
    return {"depth_spread_x0": float(depth.std()),
            **{k: float(np.corrcoef(depth, residual(h[k]))[0, 1]) for k in WITH_DEPTH}}


def aucs(ref: dict, gen: dict) -> dict[str, list[float]]:
    """(AUC, its standard error) of every group and of all observables."""
    out = {}
    for name, keys in {**GROUPS, "all": [k for k in ref if k != "e_vis"]}.items():
        keys = ["e_vis", *keys]
        r = classifier_test(np.stack([ref[k] for k in keys], 1),
                            np.stack([gen[k] for k in keys], 1))
        out[name] = [r["auc"], r["auc_std"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--geometry", required=True)
    ap.add_argument("--out", default="benchmarks/results/observable_groups.json")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(1)
    geom = load(args.geometry)
    test = read_sample(args.data)[0]
    ref = high_level(test, geom)
    a, b = halves(len(test), len(test), seed=0)[:2]
    e_inc, theta = test.primaries.energy_mev, np.arccos(test.primaries.direction[:, 2])
    results = {"data": args.data, "n": len(test),
               "floor": aucs({k: v[a] for k, v in ref.items()}, {k: v[b] for k, v in ref.items()})}
    depth = {"Geant4": depth_relations(ref, e_inc, theta)}
    for run in args.runs.split(","):
        with torch.no_grad():
            showers = load_generator(run, geom).sample(test.primaries,
                                                      np.random.default_rng(args.seed))
        gen = high_level(showers, geom)
        results[run] = aucs(ref, gen)
        depth[run] = depth_relations(gen, e_inc, theta)
    names = [*GROUPS, "all"]
    print(f"{'':34s}" + "".join(f"{n:>16s}" for n in names))
    for key, row in results.items():
        if isinstance(row, dict):
            print(f"{key:34s}" + "".join(f"{row[n][0]:9.3f} ± {row[n][1]:.3f}" for n in names))
    print(f"\nthe depth's residual spread and its correlations\n{'':34s}{'spread':>8s}"
          + "".join(f"{k:>15s}" for k in WITH_DEPTH))
    for key, row in depth.items():
        print(f"{key:34s}{row['depth_spread_x0']:8.3f}"
              + "".join(f"{row[k]:15.2f}" for k in WITH_DEPTH))
    results["depth_relations"] = depth
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
