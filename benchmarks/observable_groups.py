"""Which observables give a generator away: the classifier test (AUC, 5 folds) of Geant4 against
generated showers on groups of the high-level observables, each with the visible energy (which
carries the primary's energy), beside all of them and Geant4's own floor (two halves); and how
the shower's depth goes with the rest at fixed energy and angle (correlations of the residuals
of a quadratic fit in ln E and theta, and the depth's residual spread): in Geant4 a shower that
develops late is wider, has fewer hits and a smaller core. For a 3DGAN with summaries (the
shower's depth, width, ... as conditions, drawn from their law in generation), also how
closely its showers follow the summaries they are given: each Geant4 shower's own, put in
through the noise that draws them (SummaryLaw.noise); per summary, the correlation of the
given and the generated values (standardised given the conditions) and their spreads, once as
generation draws the HCAL's share and the response and once with both at their laws' means.

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
from fastshower.models import gan3d
from fastshower.models.base import primaries_inputs
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


AT_MEAN = {"": (), " (HCAL share, response at their laws' means)": ("z_leakage", "z_response")}


def following(model: gan3d.Gan3D, test, geom, seed: int) -> dict[str, dict[str, dict]]:
    """Per variant of AT_MEAN (its noises of the program set to 0, to see what their draws add
    to the spread) and summary: correlation of the given (Geant4's) and the generated d, and
    both spreads; both from the images as training sees them (training_observables)."""
    data = gan3d.ImageData(test, geom)
    mip = model.norms["mip_mev"]
    cond = model.conditions(data.primaries)
    law = model.summary_law
    given = law.standardise(gan3d.training_observables(data.energy_mev, data.primaries, geom,
                                                       model.cfg, mip), cond)
    program = model.export_module().eval()
    inputs = {k: torch.from_numpy(v)
              for k, v in primaries_inputs(data.primaries, model.particles).items()}
    gen = torch.Generator().manual_seed(seed)
    drawn = {k: torch.randn((len(data), *shape), generator=gen)
             for k, (_, shape) in program.noise.items()}
    drawn["z_summaries"] = law.noise(given)
    out = {}
    for variant, at_mean in AT_MEAN.items():
        feed = {**inputs, **drawn,
                **{k: torch.zeros_like(drawn[k]) for k in at_mean if k in drawn}}
        with torch.no_grad():
            image = torch.cat([program(**{k: v[i:i + 128] for k, v in feed.items()})[0]
                               for i in range(0, len(data), 128)])
        made = law.standardise(gan3d.training_observables(image, data.primaries, geom,
                                                          model.cfg, mip), cond)
        out[variant] = {name: {"correlation": float(np.corrcoef(given[:, j], made[:, j])[0, 1]),
                               "given_spread": float(given[:, j].std()),
                               "generated_spread": float(made[:, j].std())}
                        for j, name in enumerate(model.cfg.summaries)}
    return out


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
    follow = {}
    for run in args.runs.split(","):
        model = load_generator(run, geom)
        with torch.no_grad():
            showers = model.sample(test.primaries, np.random.default_rng(args.seed))
        gen = high_level(showers, geom)
        results[run] = aucs(ref, gen)
        depth[run] = depth_relations(gen, e_inc, theta)
        if getattr(model, "summary_law", None) is not None:
            follow.update({run + variant: rows for variant, rows in
                           following(model, test, geom, args.seed).items()})
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
    if follow:
        print("\nthe summaries given (Geant4's) and generated: correlation, spreads")
        for run, row in follow.items():
            print(f"{run:34s}" + "".join(
                f"  {k} {v['correlation']:.2f} ({v['given_spread']:.2f} -> "
                f"{v['generated_spread']:.2f})" for k, v in row.items()))
        results["following"] = follow
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
