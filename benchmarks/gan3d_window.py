"""Which image window holds the grid showers (issue 18): the share of each shower's ECAL energy
inside (a) 25 x 25 cells following the primary's line layer by layer (gan3d's window), (b) 25 x
25 cells fixed at the impact point (the original 3DGAN's), (c) the full 51 x 51 layer, by
incidence angle. Usage:
    python benchmarks/gan3d_window.py --data samples/grid/heldout/e- \
        --geometry data/geometry/clic_grid.h5 [--out benchmarks/results/gan3d_window.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastshower.geometry import load
from fastshower.models.gan3d import LAYERS, WINDOW, images, window_cells
from fastshower.simhits import Primaries, read_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--geometry", default="data/geometry/clic_grid.h5")
    ap.add_argument("--out", default="benchmarks/results/gan3d_window.json")
    args = ap.parse_args()
    geom = load(args.geometry)
    batch = read_sample(args.data)[0]
    p = batch.primaries
    event, ids, energy = batch.flat()
    ecal = np.bincount(event, np.where(geom.cells["layer"][ids] < LAYERS, energy, 0.0), len(batch))
    follow, _ = images(batch, window_cells(geom, p), geom.n_cells)
    # the window of the impact point in every layer: the line through it along +z
    entry = p.position_mm + (geom.layers[0].z - p.position_mm[:, 2:3]) / p.direction[:, 2:3] \
        * p.direction
    fixed, _ = images(batch, window_cells(geom, Primaries(p.pdg, p.energy_mev, entry,
                                                          np.tile([0.0, 0.0, 1.0], (len(p), 1)))),
                      geom.n_cells)
    theta = np.degrees(np.arccos(p.direction[:, 2]))
    rows = []
    for lo, hi in ((0, 10), (10, 20), (20, 30)):
        m = (theta >= lo) & (theta < hi)
        if not m.any():
            continue
        share = {name: float(np.mean(img[m].sum((1, 2, 3)) / ecal[m]))
                 for name, img in (("following", follow), ("fixed", fixed))}
        rows.append({"theta_deg": [lo, hi], "showers": int(m.sum()), **share})
        print(f"theta {lo}-{hi} deg ({m.sum()} showers): ECAL energy inside {WINDOW} x {WINDOW} "
              f"following {share['following']:.4f}, fixed at the impact point "
              f"{share['fixed']:.4f} (full 51 x 51: 1)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "rows": rows}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
