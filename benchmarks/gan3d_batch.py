"""The physics effect of a larger global batch (issue 18, the original 3DGAN's open question):
the FPD of the high-level observables per energy bin, generated against Geant4, for runs
trained with the same showers seen at 1x, 4x, 16x the mini-batch (fewer steps, learning rate
scaled by the square root of the batch factor, warm-up scaled down alike), from the sim-hit
files that benchmarks/fidelity.py writes. Floor: Geant4 against Geant4. Usage:
    python benchmarks/gan3d_batch.py --results DIR1,DIR2,DIR3 --labels 1x,4x,16x \
        --geometry data/geometry/clic_grid.h5 [--out benchmarks/results/gan3d_batch.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastshower.geometry import load
from fastshower.simhits import read_sample
from fastshower.validation.metrics import energy_bins, fpd, halves
from fastshower.validation.observables import high_level


def per_bin(ref: dict, gen: dict, e_ref: np.ndarray, e_gen: np.ndarray,
            edges: np.ndarray) -> list[float]:
    """FPD of gen against ref in each energy bin."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        r, g = (e_ref >= lo) & (e_ref < hi), (e_gen >= lo) & (e_gen < hi)
        out.append(fpd({k: v[r] for k, v in ref.items()}, {k: v[g] for k, v in gen.items()}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True, help="fidelity.py output folders, comma-separated")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--geometry", default="data/geometry/clic_grid.h5")
    ap.add_argument("--out", default="benchmarks/results/gan3d_batch.json")
    args = ap.parse_args()
    geom = load(args.geometry)
    folders, labels = args.results.split(","), args.labels.split(",")
    g4 = read_sample(Path(folders[0]) / "geant4_test.root", geom)[0]
    hl = high_level(g4, geom)
    first, second, _ = halves(len(g4), len(g4))
    energy = g4.primaries.energy_mev
    edges = energy_bins(energy[first])
    ref = {k: v[first] for k, v in hl.items()}
    rows = {"floor": per_bin(ref, {k: v[second] for k, v in hl.items()}, energy[first],
                             energy[second], edges)}
    print("energy bins (GeV):", np.round(edges / 1e3, 1).tolist())
    print(f"  {'floor':>6}: " + "  ".join(f"{x:8.3f}" for x in rows["floor"]))
    for folder, label in zip(folders, labels, strict=True):
        gen_file = next(f for f in Path(folder).glob("*_test.root") if f.name != "geant4_test.root")
        gen = high_level(read_sample(gen_file, geom)[0], geom)
        # the generated showers have Geant4's primaries, in its order: the floor's other half
        rows[label] = per_bin(ref, {k: v[second] for k, v in gen.items()}, energy[first],
                              energy[second], edges)
        print(f"  {label:>6}: " + "  ".join(f"{x:8.3f}" for x in rows[label]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"edges_gev": (edges / 1e3).tolist(), "fpd": rows,
                               "results": folders}, indent=2))


if __name__ == "__main__":
    main()
