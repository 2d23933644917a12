"""ML showers inside a Geant4 run against the same events fully simulated, in one run.

Both productions shoot the same primaries (same seed) from the interaction point through
--upstream-x0 radiation lengths of silicon to the calorimeter, one Geant4 process each on one
core. In the hybrid one, e+-/gamma reaching the calorimeter above --min-energy get their showers
from the model (inference.g4hook). Prints CPU time per event of both and the ratio, the share
of the energy the model took, and the validation suite's comparison of hybrid vs full Geant4
(classifier AUC with its Geant4-vs-Geant4 floor; the report is written to OUT/validation).
Usage:
    python benchmarks/hybrid.py --model src/fastshower/models/pretrained/flowgnn.pt \
        --particle gamma --energy 10:100 --n 300 [--jobs 2] [--out benchmarks/results/hybrid]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fastshower.cli import make_gun
from fastshower.inference.g4hook import fast_spec
from fastshower.simulation.jobs import simulate
from fastshower.validation.report import validate


def cpu_per_event(folder: Path) -> tuple[float, dict]:
    jobs = [json.loads(f.read_text()) for f in sorted(folder.glob("logs/job_*.json"))]
    n = sum(j["n"] for j in jobs)
    fast = {"showers": sum(j.get("fast_showers") or 0 for j in jobs),
            "energy_mev": sum(j.get("fast_energy_mev") or 0.0 for j in jobs)}
    return sum(j["cpu_seconds"] for j in jobs) / n, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="run folder, model.pt or ONNX export")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--particle", default="gamma")
    ap.add_argument("--energy", default="10:100", help="GeV, a value or a range")
    ap.add_argument("--spectrum", default="log-uniform")
    ap.add_argument("--eta", default="1.99:2.01")
    ap.add_argument("--phi", default="89.5:90.5")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--upstream-x0", type=float, default=0.3)
    ap.add_argument("--min-energy", type=float, default=1.0, help="GeV")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--geometry", default="data/geometry/hgcal_roi.h5")
    ap.add_argument("--out", default="benchmarks/results/hybrid")
    args = ap.parse_args()
    out = Path(args.out)
    spectrum = args.spectrum if ":" in args.energy else None
    gun = make_gun(args.particle, args.energy, spectrum, args.eta, args.phi, None, "0,0,0")
    fast = fast_spec(args.model, args.backend, args.min_energy)
    for name, fast_cfg in (("full", None), ("hybrid", fast)):
        if (out / name).exists() and not (out / name / "production.json").exists():
            shutil.rmtree(out / name)
        simulate(args.geometry, gun, args.n, out / name, jobs=args.jobs, seed=args.seed,
                 upstream_x0=args.upstream_x0, fast=fast_cfg)
    full, _ = cpu_per_event(out / "full")
    hybrid, handed = cpu_per_event(out / "hybrid")
    m = validate(out / "full", out / "hybrid", args.geometry, out / "validation")
    g, f = m["generated"], m["floor"]
    result = {
        "gun": gun.model_dump(mode="json"), "n": args.n, "upstream_x0": args.upstream_x0,
        "model": args.model, "backend": args.backend, "min_energy_gev": args.min_energy,
        "full_cpu_s_per_event": full, "hybrid_cpu_s_per_event": hybrid,
        "speedup": full / hybrid, "model_showers_per_event": handed["showers"] / args.n,
        "auc": g["classifier"]["auc"], "auc_std": g["classifier"]["auc_std"],
        "auc_floor": f["classifier"]["auc"], "fpd": g["fpd"], "fpd_floor": f["fpd"],
        "separation_power": {k: v["separation_power"] for k, v in g["observables"].items()},
    }
    print(f"full Geant4 {1e3 * full:.0f} ms/event, hybrid {1e3 * hybrid:.0f} ms/event (CPU, "
          f"one core each): {result['speedup']:.1f}x; the model made "
          f"{result['model_showers_per_event']:.2f} showers per event")
    print(f"hybrid vs full Geant4: AUC {result['auc']:.3f} ± {result['auc_std']:.3f} (floor "
          f"{result['auc_floor']:.3f}); FPD {result['fpd']:.3f} (floor {result['fpd_floor']:.3f})")
    worst = sorted(result["separation_power"].items(), key=lambda kv: -kv[1])[:3]
    print("worst observables (separation power): "
          + ", ".join(f"{k} {v:.3f}" for k, v in worst))
    (out / "hybrid.json").write_text(json.dumps(result, indent=2))
    print(f"-> {out / 'hybrid.json'}, report {out / 'validation' / 'report.html'}")


if __name__ == "__main__":
    main()
