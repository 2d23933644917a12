"""The quality-speed frontier of the generators: one row per model from a fidelity run
(benchmarks/fidelity.py) and a speed run (benchmarks/speed.py) of the same models, as a
Markdown table and a PNG (classifier AUC against CPU time per shower). Measures nothing
itself: it puts the two benchmarks' JSON side by side. Usage:
    python benchmarks/frontier.py --fidelity benchmarks/results/heldout/fidelity.json[,more.json] \
        --speed benchmarks/results/speed.json[,more.json] [--out docs/frontier]
Fidelity runs must be on the same showers (the table says which).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402


def rows(fidelity: list[dict], speed: list[dict]) -> list[dict]:
    """One row per model of the fidelity runs that a speed run timed on one thread, named by
    model and run."""
    timed: dict[str, dict] = {}
    for r in speed:
        if r["threads"] == 1 and r["backend"] == "torch":
            entry = timed.setdefault(r["run"], {"parameters": r["parameters"]})
            for b in r["batches"]:
                entry[(r["energy_gev"], b["batch"])] = b
    out = []
    for name, m in ((n, m) for f in fidelity for n, m in f["models"].items()):
        t = timed.get(m["run"])
        if t is None:
            continue
        model, run = name.split("-")[0], Path(m["run"]).stem
        name = model if run == model else f"{model} ({run})"
        out.append({"name": name, "auc": m["auc"], "auc_std": m["auc_std"],
                    "auc_low": m["auc_low_level"], "fpd": m["fpd"], "fpd_floor": m["fpd_floor"],
                    "fpd_seeds": (m.get("fpd_seeds_mean"), m.get("fpd_seeds_std")),
                    "parameters": t["parameters"], "timings": t})
    return out


def _fpd(r: dict) -> str:
    """The FPD (floor); over more generator seeds (mean ± spread) where the run has them."""
    mean, std = r["fpd_seeds"]
    value = f"{r['fpd']:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return f"{value} ({r['fpd_floor']:.2f})"


def table(rows_: list[dict], energies: list[float], batches: list[int]) -> str:
    head = ["model", "AUC high", "AUC low", "FPD (floor)"] + [
        f"ms @ {e:g} GeV, batch {' / '.join(map(str, batches))}" for e in energies] + [
        f"×Geant4 @ batch {batches[-1]} ({' / '.join(f'{e:g}' for e in energies)} GeV)",
        "peak RSS MB", "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_:
        t = r["timings"]
        times = [" / ".join(f"{1e3 * t[(e, b)]['s_per_shower']:.2f}" if (e, b) in t else "–"
                            for b in batches) for e in energies]
        speedup = " / ".join(f"{t[(e, batches[-1])]['speedup_vs_geant4_per_core']:.0f}"
                             if (e, batches[-1]) in t else "–" for e in energies)
        rss = max(b["peak_rss_mb"] for k, b in t.items() if isinstance(k, tuple))
        lines.append("| " + " | ".join(
            [r["name"], f"{r['auc']:.3f} ± {r['auc_std']:.3f}", f"{r['auc_low']:.3f}",
             _fpd(r), *times, speedup, f"{rss:.0f}",
             f"{r['parameters'] or 0:,}"]) + " |")
    return "\n".join(lines)


def plot(rows_: list[dict], energy: float, batch: int, floor: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows_):
        t = r["timings"]
        b = t.get((energy, batch)) or t.get((energy, max(k[1] for k in t if isinstance(k, tuple)
                                                      and k[0] == energy)))
        if b is None:
            continue
        ms = 1e3 * b["s_per_shower"]
        ax.errorbar(ms, r["auc"], yerr=r["auc_std"], fmt="o", capsize=3)
        ax.annotate(r["name"], (ms, r["auc"]), textcoords="offset points",
                    xytext=(8, 6 if i % 2 == 0 else -14))
    ax.axhline(0.60, ls="--", c="grey", lw=1, label="target AUC 0.60")
    ax.axhline(floor, ls=":", c="k", lw=1, label=f"Geant4 vs Geant4 {floor:.2f}")
    ax.set_xscale("log")
    ax.set_xlim(0.5, 200)
    ax.set_xticks([0.5, 1, 2, 5, 10, 20, 50, 100, 200])
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(f"ms per shower ({energy:g} GeV photons, batch {batch} or the largest timed, "
                  "1 thread)")
    ax.set_ylabel("classifier AUC (high-level)")
    ax.set_ylim(0.45, 1.0)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fidelity", required=True)
    ap.add_argument("--speed", required=True)
    ap.add_argument("--out", default="docs/frontier")
    args = ap.parse_args()
    fidelity = [json.loads(Path(f).read_text()) for f in args.fidelity.split(",")]
    if len({(f["data"], f["n_test"]) for f in fidelity}) > 1:
        raise SystemExit("the fidelity runs were made on different showers")
    speed = [r for f in args.speed.split(",") for r in json.loads(Path(f).read_text())["results"]
             if r["energy_gev"] is not None]  # fixed energies only: a spectrum has no column
    found = rows(fidelity, speed)
    energies = sorted({r["energy_gev"] for r in speed})
    batches = sorted({b["batch"] for r in speed for b in r["batches"]})
    md = table(found, energies, batches)
    floor = next(iter(fidelity[0]["models"].values()))["auc_floor"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(found, max(energies), max(batches), floor, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(
        f"Fidelity: {args.fidelity} ({fidelity[0]['n_test']} showers of {fidelity[0]['data']}); "
        f"speed: {args.speed}.\n\n{md}\n")
    print(md)
    print(f"-> {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
