"""Which images hold the grid showers (issue 18): Geant4's own showers cut down to what an
image can hold, and put back onto the grid's cells as gan3d puts its images (place_image),
against the whole showers in the validation suite's classifier test (high-level
observables; floor: Geant4 against Geant4). A generator that were perfect on its images could
do no better. Cuts: (a) the fine image alone, 25 x 25 cells of each ECAL layer around the
shower's axis (the original 3DGAN's 25 x 25 x 25 window, here following the axis); (b) gan3d's
fine + coarse images (coarse: 5 x 5-cell ECAL blocks out to +-27 cells, the first 15 HCAL
layers). Usage:
    python benchmarks/gan3d_images.py --data samples/grid/heldout/e- \
        --geometry data/geometry/clic_grid.h5 [--out benchmarks/results/gan3d_images.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastshower.geometry import load
from fastshower.models.gan3d import FINE_SHAPE, images, place_image
from fastshower.simhits import read_sample
from fastshower.validation.metrics import compare_with_floor
from fastshower.validation.observables import high_level


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--geometry", default="data/geometry/clic_grid.h5")
    ap.add_argument("--out", default="benchmarks/results/gan3d_images.json")
    args = ap.parse_args()
    geom = load(args.geometry)
    batch = read_sample(args.data, geom)[0]
    whole = high_level(batch, geom)
    image, outside = images(batch, geom)
    event, _, energy = batch.flat()
    visible = np.bincount(event, energy, len(batch))
    fine_only = image.copy()
    fine_only[:, np.prod(FINE_SHAPE):] = 0.0
    rows = {}
    for name, cut in (("fine 25 x 25 x 25", fine_only), ("fine + coarse (gan3d)", image)):
        placed = high_level(place_image(cut, batch.primaries, geom, np.random.default_rng(0)),
                            geom)
        r = compare_with_floor(whole, placed, seed=0)
        g, f = r["generated"], r["floor"]
        worst = max(g["observables"], key=lambda k: g["observables"][k]["separation_power"])
        rows[name] = {"auc": g["classifier"]["auc"], "auc_std": g["classifier"]["auc_std"],
                      "floor_auc": f["classifier"]["auc"], "fpd": g["fpd"],
                      "energy_share": float(np.mean(cut.sum(1) / visible)),
                      "hits": float(placed["n_hits"].mean()),
                      "hits_geant4": float(whole["n_hits"].mean()), "worst": worst}
        print(f"{name}: AUC {g['classifier']['auc']:.3f} +- {g['classifier']['auc_std']:.3f} "
              f"(floor {f['classifier']['auc']:.3f}), FPD {g['fpd']:.3f}, visible energy held "
              f"{rows[name]['energy_share']:.4f}, hits {rows[name]['hits']:.0f} of "
              f"{rows[name]['hits_geant4']:.0f}, worst observable {worst}")
    print(f"energy beyond both images: {np.mean(outside / visible):.4f} of the visible")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "showers": len(batch), "cuts": rows,
                               "beyond_share": float(np.mean(outside / visible))}, indent=2))


if __name__ == "__main__":
    main()
