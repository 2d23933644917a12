"""Where a gan3d's images differ from Geant4's (issue 18): the energy and the lit cells (at
least the readout threshold, half a MIP) of each region of the images, Geant4's held-out
showers against a run's images for the same primaries, per energy band. Regions: the fine
image's rings around the axis cell (in cells), the coarse image's ECAL blocks, the HCAL. The
high-level classifier sees only sums over them; here one sees which part of the shower a
generator gets wrong.

    python benchmarks/gan3d_regions.py --data samples/grid/heldout/e- --runs RUN[,RUN...] \
        --geometry data/geometry/clic_grid.h5 [--showers 1000] --out benchmarks/results/regions.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastshower.geometry.detector import load
from fastshower.inference.generate import load_generator
from fastshower.models.base import primaries_inputs, program_spec, run_program, torch_call
from fastshower.models.gan3d import (
    FINE_VOXELS,
    FLOOR_MIP,
    HIT_MIP,
    LAYERS,
    VOXEL,
    VOXELS,
    _lattice,
    images,
    voxel_floors,
)
from fastshower.simhits import read_sample

BANDS_GEV = ((10, 60), (60, 200), (200, 510))
RINGS = ((0, 1), (1, 3), (3, 6), (6, 9), (9, 13))  # cells from the axis cell (hypot)


def regions() -> dict[str, np.ndarray]:
    """name -> (VOXELS,) mask of the voxels of each region."""
    fine = np.arange(VOXELS) < FINE_VOXELS
    r = np.hypot(VOXEL["di"], VOXEL["dj"])
    out = {f"fine r {lo}-{hi}": fine & (r >= lo) & (r < hi) for lo, hi in RINGS}
    out["coarse ECAL"] = ~fine & (VOXEL["layer"] < LAYERS) & VOXEL["used"]
    out["HCAL"] = VOXEL["layer"] >= LAYERS
    return out


def table(image: np.ndarray, energy_gev: np.ndarray, threshold: np.ndarray) -> dict:
    """region -> band -> mean energy (MeV) and mean, spread of lit cells per shower."""
    out = {}
    for name, mask in regions().items():
        e, lit = image[:, mask].sum(1), (image[:, mask] >= threshold[mask]).sum(1)
        out[name] = {f"{lo}-{hi} GeV": {"energy_mev": float(e[s].mean()),
                                        "lit": float(lit[s].mean()), "lit_std": float(lit[s].std())}
                     for lo, hi in BANDS_GEV
                     for s in [(energy_gev >= lo) & (energy_gev < hi)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--geometry", default="data/geometry/clic_grid.h5")
    ap.add_argument("--showers", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/regions.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    geom = load(args.geometry)
    batch = read_sample(args.data, geom)[0]
    batch = batch.subset(np.arange(min(args.showers, len(batch))))
    energy_gev = batch.primaries.energy_mev / 1e3
    threshold = voxel_floors(_lattice(geom).mip_mev) * (HIT_MIP / FLOOR_MIP)
    results = {"Geant4": table(images(batch, geom)[0], energy_gev, threshold)}
    for run in args.runs.split(","):
        model = load_generator(run, geom)
        program = model.export_module()
        with torch.no_grad():
            image = run_program(torch_call(program), primaries_inputs(batch.primaries,
                                                                      model.particles),
                                program_spec(program), np.random.default_rng(args.seed))["image"]
        results[run] = table(image, energy_gev, threshold)
    for name in regions():
        print(name)
        for band in results["Geant4"][name]:
            row = "  ".join(f"{k.split('/')[-1]} {v[name][band]['energy_mev'] / 1e3:7.3f} GeV "
                            f"{v[name][band]['lit']:7.1f} lit" for k, v in results.items())
            print(f"  {band:>12}: {row}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "showers": len(batch), "hit_mip": HIT_MIP,
                               "regions": results}, indent=2))


if __name__ == "__main__":
    main()
