"""Physics validation of the reference simulation: sampling fraction, linearity, resolution,
shower depth, photon/electron start, containment. Writes JSON and figures for docs/physics.md.

Usage: python benchmarks/physics.py [--scale 1.0] [--out docs/figures]
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
from scipy.optimize import curve_fit  # noqa: E402

from fastshower.geometry import build_geometry, save  # noqa: E402
from fastshower.simhits import read_showers  # noqa: E402
from fastshower.simulation.runner import JobSpec, run_job  # noqa: E402
from fastshower.validation.observables import (  # noqa: E402
    centroid_depth,
    dedx_weights,
    depth_x0,
    layer_energies,
    start_layer,
    weighted_energy,
)

ENERGIES = (5.0, 10.0, 20.0, 50.0, 100.0)
N_BASE = {5.0: 120, 10.0: 100, 20.0: 60, 50.0: 36, 100.0: 24}


def _job(spec: JobSpec) -> dict:
    return run_job(spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--replot", action="store_true", help="redraw from OUT/physics.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        saved = json.loads((out / "physics.json").read_text())
        plot(saved["points"], saved["summary"], out)
        return
    tmp = Path(tempfile.mkdtemp())
    geom = build_geometry("hgcal")
    gpath = save(geom, tmp / "g.h5")
    specs = []
    for particle in ("e-", "gamma"):
        for e in ENERGIES:
            n = max(4, int(N_BASE[e] * args.scale))
            for half in range(2):  # two processes per point: both cores busy
                specs.append(JobSpec(geometry=str(gpath), gun={"particle": particle,
                                                                "energy": [e]},
                                     n=n // 2, seed=100 + len(specs),
                                     out=str(tmp / f"{particle}_{e}_{half}.root"), leakage=True))
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:  # one Geant4 per process
        results = pool.map(_job, specs, chunksize=1)

    depth = depth_x0(geom)
    weights = dedx_weights(geom)
    ce_e = np.array([lay.section == "CE-E" for lay in geom.layers])
    rows = []
    for particle in ("e-", "gamma"):
        for e in ENERGIES:
            mine = [(s, r) for s, r in zip(specs, results, strict=True)
                    if s.gun["particle"] == particle and s.gun["energy"] == [e]]
            batches = [read_showers(s.out) for s, _ in mine]
            profile = np.concatenate([layer_energies(b, geom) for b in batches])
            calibrated = np.concatenate([weighted_energy(b, weights) for b in batches])
            escaped = np.concatenate([r["escaped_mev"] for _, r in mine])
            cpu = sum(r["cpu_seconds"] for _, r in mine) / sum(r["n"] for _, r in mine)
            vis, vis_e = profile.sum(1), profile[:, ce_e].sum(1)
            rows.append({
                "particle": particle, "energy_gev": e, "n": len(vis),
                "sampling_fraction": float(vis.mean() / (e * 1e3)),
                "sampling_fraction_err": float(vis.std(ddof=1) / np.sqrt(len(vis)) / (e * 1e3)),
                "resolution_ce_e": float(vis_e.std(ddof=1) / vis_e.mean()),
                "response_dedx": float(calibrated.mean() / (e * 1e3)),
                "response_dedx_err": float(calibrated.std(ddof=1) / np.sqrt(len(vis)) / (e * 1e3)),
                "resolution_dedx": float(calibrated.std(ddof=1) / calibrated.mean()),
                "centroid_x0": float(centroid_depth(profile, depth).mean()),
                "start_layer": float(start_layer(profile).mean()),
                "containment": float(1 - escaped.mean() / (e * 1e3)),
                "cpu_s_per_shower_with_leakage_tracking": cpu,
            })
    summary = summarise(rows)
    (out / "physics.json").write_text(json.dumps({"points": rows, "summary": summary},
                                                 indent=2))
    plot(rows, summary, out)
    print(json.dumps(summary, indent=2))


def _stochastic(e: np.ndarray, res: np.ndarray) -> tuple[float, float]:
    """Fit sigma/E = a/sqrt(E) (+) c; returns (a, c) in per cent."""
    (a, c), _ = curve_fit(lambda x, a, c: np.sqrt(a**2 / x + c**2), e, res, p0=(0.2, 0.01))
    return 100 * abs(a), 100 * abs(c)


def summarise(rows: list[dict]) -> dict:
    s = {}
    for particle in ("e-", "gamma"):
        r = [x for x in rows if x["particle"] == particle]
        e = np.array([x["energy_gev"] for x in r])
        sf = np.array([x["sampling_fraction"] for x in r])
        resp = np.array([x["response_dedx"] for x in r])
        slope, icpt = np.polyfit(e, resp * e, 1)  # E_cal = slope * E + icpt (GeV)
        lin = (slope * e + icpt) / (resp * e) - 1
        a_raw, c_raw = _stochastic(e, np.array([x["resolution_ce_e"] for x in r]))
        a_cal, c_cal = _stochastic(e, np.array([x["resolution_dedx"] for x in r]))
        cen = np.array([x["centroid_x0"] for x in r])
        s[particle] = {
            "sampling_fraction_mean": float(sf.mean()),
            "sampling_fraction_max_dev_pct": float(100 * np.max(np.abs(sf / sf.mean() - 1))),
            "response_dedx_mean": float(resp.mean()),
            "response_dedx_max_dev_pct": float(100 * np.max(np.abs(resp / resp.mean() - 1))),
            "linearity_max_residual_pct": float(100 * np.max(np.abs(lin))),
            "stochastic_term_ce_e_raw_pct": a_raw, "constant_term_ce_e_raw_pct": c_raw,
            "stochastic_term_dedx_pct": a_cal, "constant_term_dedx_pct": c_cal,
            "depth_slope_x0_per_lnE": float(np.polyfit(np.log(e), cen, 1)[0]),
            "min_containment": float(min(x["containment"] for x in r)),
        }
    eg = [x for x in rows if x["particle"] == "gamma"]
    ee = [x for x in rows if x["particle"] == "e-"]
    s["gamma_minus_electron_centroid_x0"] = float(np.mean(
        [g["centroid_x0"] - el["centroid_x0"] for g, el in zip(eg, ee, strict=True)]))
    s["gamma_minus_electron_start_layers"] = float(np.mean(
        [g["start_layer"] - el["start_layer"] for g, el in zip(eg, ee, strict=True)]))
    return s


def plot(rows: list[dict], summary: dict, out: Path) -> None:
    plt.style.use(mplhep.style.CMS)
    fig, axes = plt.subplots(1, 3, figsize=(24, 7))
    for particle, marker in (("e-", "o"), ("gamma", "s")):
        r = [x for x in rows if x["particle"] == particle]
        e = np.array([x["energy_gev"] for x in r])
        sf0 = np.mean([x["sampling_fraction"] for x in r])
        rs0 = np.mean([x["response_dedx"] for x in r])
        axes[0].errorbar(e, [x["sampling_fraction"] / sf0 for x in r],
                         [x["sampling_fraction_err"] / sf0 for x in r], fmt=marker,
                         label=f"{particle}, raw (mean {100 * sf0:.2f} %)")
        axes[0].errorbar(e, [x["response_dedx"] / rs0 for x in r],
                         [x["response_dedx_err"] / rs0 for x in r], fmt=marker, mfc="none",
                         label=f"{particle}, dE/dx-weighted")
        axes[1].plot(e, [100 * x["resolution_dedx"] for x in r], marker, label=particle)
        axes[2].plot(np.log(e), [x["centroid_x0"] for x in r], marker, label=particle)
    s = summary["e-"]
    x = np.geomspace(4, 120, 100)
    axes[1].plot(x, np.hypot(s["stochastic_term_dedx_pct"] / np.sqrt(x),
                             s["constant_term_dedx_pct"]), "-",
                 label=f"e-: {s['stochastic_term_dedx_pct']:.1f}%/√E (+) "
                       f"{s['constant_term_dedx_pct']:.1f}%")
    axes[0].axhspan(0.98, 1.02, color="grey", alpha=0.2)
    for ax, (xl, yl) in zip(axes, [("E [GeV]", "response / mean"),
                                   ("E [GeV]", "σ/E, dE/dx-weighted [%]"),
                                   ("ln(E / GeV)", "energy-weighted depth [X0]")], strict=True):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=14)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    fig.savefig(out / "physics.png", dpi=80, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
