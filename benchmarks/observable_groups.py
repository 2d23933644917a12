"""Which observables give a generator away: the classifier test (AUC, 5 folds) of Geant4 against
generated showers on groups of the high-level observables, each with the visible energy (which
carries the primary's energy), beside all of them and Geant4's own floor (two halves).

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
}


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
    results = {"data": args.data, "n": len(test),
               "floor": aucs({k: v[a] for k, v in ref.items()}, {k: v[b] for k, v in ref.items()})}
    for run in args.runs.split(","):
        with torch.no_grad():
            showers = load_generator(run, geom).sample(test.primaries,
                                                      np.random.default_rng(args.seed))
        results[run] = aucs(ref, high_level(showers, geom))
    names = [*GROUPS, "all"]
    print(f"{'':34s}" + "".join(f"{n:>16s}" for n in names))
    for key, row in results.items():
        if isinstance(row, dict):
            print(f"{key:34s}" + "".join(f"{row[n][0]:9.3f} ± {row[n][1]:.3f}" for n in names))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
