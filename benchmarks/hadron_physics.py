"""Physics of the offline hadronic mode (issue 20): pi-, pi+ and protons against e- in the
HGCAL-like CE-E + CE-H (region widened to a 300 mm radius, as the hadron samples): e/h,
resolution, lateral and longitudinal containment, longitudinal profile in lambda_I, CPU per
shower, and the systematic scans of the synthetic neutron data on pi- (capture x3 and x1/3,
elastic and inelastic +-30 %).

Energies are at the EM scale: cells weighted by dE/dx (geometry.showers.dedx_weights) and
divided by the electrons' weighted response at the same energy, so h/e = 1 / (e/h). The gun's
energy is the kinetic energy (Geant4's particle gun), so a proton's rest mass is not counted.
Run it with --physics full (and GEANT4_DATA_DIR set) to measure the same numbers with the real
datasets. Usage: python benchmarks/hadron_physics.py [--scale 1] [--physics offline]
[--out docs/figures]; writes OUT/hadron_physics{.json,.png}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402

from fastshower.geometry import build_geometry, save  # noqa: E402
from fastshower.geometry.showers import dedx_weights  # noqa: E402
from fastshower.simhits import read_showers  # noqa: E402
from fastshower.simulation.runner import JobSpec, run_job  # noqa: E402
from fastshower.validation.observables import (  # noqa: E402
    layer_energies,
    radial_profile,
    weighted_energy,
)

ENERGIES = (10.0, 20.0, 50.0, 100.0)
N_HADRON = {10.0: 200, 20.0: 300, 50.0: 100, 100.0: 60}
N_ELECTRON = {10.0: 40, 20.0: 30, 50.0: 20, 100.0: 12}
PARTICLES = ("e-", "pi-", "pi+", "proton")  # the order fixes each particle's seeds
HADRONS = PARTICLES[1:]
LABELS = {"e-": "e$^-$", "pi-": r"$\pi^-$", "pi+": r"$\pi^+$", "proton": "p"}
SCAN_ENERGY = 20.0  # GeV: the systematic scans, pi- with the nominal run's seeds
SCANS = {"capture x3": {"cap": 3.0}, "capture x1/3": {"cap": 1 / 3},
         "elastic +30%": {"el": 1.3}, "elastic -30%": {"el": 0.7},
         "inelastic +30%": {"inel": 1.3}, "inelastic -30%": {"inel": 0.7}}
RADII_MM = np.array([0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, np.inf])
REGION_MM = 300.0


def _spec(gpath: Path, tmp: Path, particle: str, energy: float, n: int, seed: int, half: int,
          physics: str, scan: str = "nominal") -> JobSpec:
    tag = scan.replace(" ", "_").replace("/", "")
    return JobSpec(geometry=str(gpath), gun={"particle": particle, "energy": [energy]},
                   n=n, seed=seed, out=str(tmp / f"{particle}_{energy}_{tag}_{half}.root"),
                   physics=physics, leakage=True,
                   xs_scale=SCANS.get(scan), meta={"scan": scan})


def measure(batches, escaped, cpu, geom, weights, depth_lambda, energy_gev) -> dict:
    """The numbers of one (particle, energy, scan) point; energies before the EM scale."""
    e_mev = energy_gev * 1e3
    weighted = np.concatenate([weighted_energy(b, weights) for b in batches])
    profile = np.concatenate([layer_energies(b, geom) for b in batches])
    calibrated = np.zeros(len(geom.layers))  # dE/dx-weighted energy per layer, all showers
    for b in batches:
        _, ids, energy = b.flat()
        calibrated += np.bincount(geom.cells["layer"][ids], energy * weights[ids],
                                  len(geom.layers))
    rings = np.concatenate([radial_profile(b, geom, RADII_MM) for b in batches])
    median = np.median(weighted)
    q16, q84 = np.percentile(weighted, [16, 84])
    within = np.cumsum(rings, 1) / rings.sum(1, keepdims=True).clip(1e-12)
    centroid = (profile @ depth_lambda) / profile.sum(1).clip(1e-12)
    return {"n": len(weighted), "weighted_mean_mev": float(weighted.mean()),
            "weighted_mean_err_mev": float(weighted.std(ddof=1) / np.sqrt(len(weighted))),
            "resolution": float(weighted.std(ddof=1) / weighted.mean()),
            "resolution_68": float((q84 - q16) / 2 / median),
            "escaped_fraction": float(np.mean(escaped) / e_mev),
            "visible_within_mm": {f"{r:.0f}": float(f) for r, f in
                                  zip(RADII_MM[1:-1], within.mean(0)[:-1], strict=True)},
            "centroid_lambda": float(centroid.mean()),
            "profile_weighted_mev": (calibrated / len(weighted)).tolist(),
            "cpu_s_per_shower": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    ap.add_argument("--physics", default="offline", choices=["offline", "full"])
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--replot", action="store_true", help="redraw from OUT/hadron_physics.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(json.loads((out / "hadron_physics.json").read_text()), out)
        return
    tmp = Path(tempfile.mkdtemp())
    geom = build_geometry("hgcal", {"roi_radius": REGION_MM})
    gpath = save(geom, tmp / "g.h5")
    points = [("e-", e, max(4, int(N_ELECTRON[e] * args.scale)), "nominal") for e in ENERGIES]
    points += [(h, e, max(4, int(N_HADRON[e] * args.scale)), "nominal")
               for h in HADRONS for e in ENERGIES]
    points += [("pi-", SCAN_ENERGY, max(4, int(N_HADRON[SCAN_ENERGY] * args.scale)), scan)
               for scan in SCANS]
    specs = []
    for particle, energy, n, scan in points:
        for half in range(2):  # two processes per point; a scan shares the nominal's seeds
            seed = 1000 + 10 * ENERGIES.index(energy) + 2 * PARTICLES.index(particle) + half
            specs.append(_spec(gpath, tmp, particle, energy, n // 2, seed, half, args.physics,
                               scan))
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:  # one Geant4 per process
        results = pool.map(run_job, specs, chunksize=1)

    weights = dedx_weights(geom)
    depth_lambda = np.array([lay.depth_lambda for lay in geom.layers])
    rows = []
    for particle, energy, _, scan in points:
        mine = [(s, r) for s, r in zip(specs, results, strict=True)
                if (s.gun["particle"], s.gun["energy"][0], s.meta["scan"])
                == (particle, energy, scan)]
        rows.append({"particle": particle, "energy_gev": energy, "scan": scan, **measure(
            [read_showers(s.out) for s, _ in mine],
            np.concatenate([r["escaped_mev"] for _, r in mine]),
            sum(r["cpu_seconds"] for _, r in mine) / sum(r["n"] for _, r in mine),
            geom, weights, depth_lambda, energy)})
    electron = {r["energy_gev"]: r for r in rows if r["particle"] == "e-"}
    for r in rows:  # the EM scale: the electrons' weighted response at the same energy is 1
        scale = electron[r["energy_gev"]]["weighted_mean_mev"]
        r["response_em_scale"] = r["weighted_mean_mev"] / scale
        r["response_em_scale_err"] = float(np.hypot(
            r["weighted_mean_err_mev"] / scale, r["response_em_scale"]
            * electron[r["energy_gev"]]["weighted_mean_err_mev"] / scale))
        r["e_over_h"] = 1 / r["response_em_scale"]
    nominal = next(r for r in rows if r["particle"] == "pi-" and r["energy_gev"] == SCAN_ENERGY
                   and r["scan"] == "nominal")
    for r in rows:
        if r["scan"] != "nominal":
            r["response_shift_pct"] = 100 * (r["response_em_scale"]
                                             / nominal["response_em_scale"] - 1)
            r["resolution_shift_pct"] = 100 * (r["resolution"] / nominal["resolution"] - 1)
    result = {"physics": args.physics, "region_radius_mm": REGION_MM, "points": rows,
              "layer_depth_lambda": depth_lambda.tolist(), "scan_energy_gev": SCAN_ENERGY}
    (out / "hadron_physics.json").write_text(json.dumps(result, indent=2))
    plot(result, out)
    for r in rows:
        print(f"{r['particle']:6s} {r['energy_gev']:5.0f} GeV {r['scan']:15s} n={r['n']:4d} "
              f"h/e={r['response_em_scale']:.3f}±{r['response_em_scale_err']:.3f} "
              f"σ/E={100 * r['resolution']:.1f}% σ68={100 * r['resolution_68']:.1f}% "
              f"<150mm={r['visible_within_mm']['150']:.3f} "
              f"<250mm={r['visible_within_mm']['250']:.3f} escaped={r['escaped_fraction']:.3f} "
              f"centroid={r['centroid_lambda']:.2f}λ cpu={r['cpu_s_per_shower']:.2f}s"
              + (f" shift={r['response_shift_pct']:+.1f}%" if "response_shift_pct" in r
                 else ""))


def plot(result: dict, out: Path) -> None:
    plt.style.use(mplhep.style.CMS)
    rows = [r for r in result["points"] if r["scan"] == "nominal"]
    hadrons = {h: [r for r in rows if r["particle"] == h] for h in HADRONS}
    depth = np.array(result["layer_depth_lambda"])
    step = np.gradient(depth)  # lambda_I per layer
    fig, axes = plt.subplots(1, 4, figsize=(32, 7))
    for (h, pts), marker in zip(hadrons.items(), "os^", strict=False):
        e = np.array([r["energy_gev"] for r in pts])
        axes[0].errorbar(e, [r["e_over_h"] for r in pts],
                         [r["response_em_scale_err"] * r["e_over_h"] ** 2 for r in pts],
                         fmt=marker, label=LABELS[h])
        axes[1].plot(e, [100 * r["resolution"] for r in pts], marker,
                     label=f"{LABELS[h]} σ/mean")
    axes[0].set(xscale="log", xlabel="E (kinetic) [GeV]", ylabel="e/h (dE/dx-weighted)")
    pions = hadrons["pi-"]
    x = np.geomspace(8, 120, 50)
    a = np.median([r["resolution"] * np.sqrt(r["energy_gev"]) for r in pions])
    axes[1].plot(x, 100 * a / np.sqrt(x), "-", label=f"{LABELS['pi-']} {100 * a:.0f}%/√E")
    axes[1].set(xscale="log", xlabel="E (kinetic) [GeV]", ylabel="resolution [%]")
    radii = [float(k) for k in pions[0]["visible_within_mm"]]
    for r in pions:
        axes[2].plot(radii, list(r["visible_within_mm"].values()), "o-",
                     label=f"{LABELS['pi-']} {r['energy_gev']:.0f} GeV")
    axes[2].axvline(150, color="grey", ls="--", label="default region")
    axes[2].set(xlabel="radius around the axis [mm]", ylabel=f"visible fraction (of ≤ "
                f"{result['region_radius_mm']:.0f} mm)")
    for r in rows:
        if r["energy_gev"] in (20.0, 100.0) and r["particle"] != "pi+":
            p = np.array(r["profile_weighted_mev"])
            axes[3].step(depth, p / step / p.sum(), where="mid",
                         label=f"{LABELS[r['particle']]} {r['energy_gev']:.0f} GeV")
    axes[3].set(xlabel=r"depth [$\lambda_I$]", ylabel=r"$dE/d\lambda_I$, dE/dx-weighted "
                "(normalised)", yscale="log")
    for ax in axes:
        ax.legend(fontsize=14)
    fig.savefig(out / "hadron_physics.png", dpi=70, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
