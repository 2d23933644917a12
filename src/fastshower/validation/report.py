"""`fastshower validate`: compare two sim-hit samples, write metrics.json and an HTML report.

Works on any two samples with the same geometry (Geant4 vs Geant4, or Geant4 vs a model); every
metric is shown beside its noise floor (one half of the reference against the other half).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Protocol

import awkward as ak
import matplotlib.pyplot as plt
import numpy as np

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import load
from fastshower.simhits import ShowerBatch, read_sample
from fastshower.validation.display import plot_shower
from fastshower.validation.export import default_binning, voxelise
from fastshower.validation.metrics import (
    compare_in_energy_bins,
    compare_per_particle,
    compare_with_floor,
    response_resolution,
)
from fastshower.validation.observables import (
    RADIAL_EDGES,
    depth_x0,
    high_level,
    layer_energies,
    radial_profile,
)
from fastshower.validation.plots import observables_figure, profiles_figure, summary_figure

LOW_LEVEL = ("voxel energies, log(1 + 1000 E_voxel / E_inc), in the cylindrical binning of the "
             "CaloChallenge export")
MODEL_QUESTIONS = {
    "particles_and_conditions": "particle types and conditions",
    "training_set_size": "training-set size",
    "data_structure": "data structure and scaling",
    "condition_encoding": "condition encoding",
    "tuning": "tuning approach and metric",
    "model_format": "model file format and extra files",
    "inference_library": "inference library",
    "time_per_shower": "time per shower",
    "memory": "memory footprint",
    "gpu_tested": "GPU tested",
}


def _png(fig, path: Path) -> str:
    """Save a figure as PNG beside the report; returns it base64-encoded for embedding."""
    fig.savefig(path, format="png", dpi=70, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode()


def validate(reference: str | Path, generated: str | Path, geometry: str | Path,
             out: str | Path, seed: int = 0, regressor: Regressor | None = None) -> dict:
    """Compare ``generated`` with ``reference``; writes OUT/metrics.json and OUT/report.html.
    ``regressor``: an energy-regression run trained on Geant4, applied to both samples (a
    physics-level test: a generator should give the regression Geant4's response and
    resolution)."""
    out = Path(out)
    geom = load(geometry)
    ref, meta_r = read_sample(reference, geom)
    gen, meta_g = read_sample(generated, geom)
    for name, meta in (("reference", meta_r), ("generated", meta_g)):
        geom.require_same(meta.get("geometry_hash"), f"the {name} sample")
    if len(ref) < 20 or len(gen) < 10:
        raise FastShowerError(f"too few showers to compare ({len(ref)} reference, {len(gen)} "
                              "generated): need at least 20 and 10")
    out.mkdir(parents=True, exist_ok=True)
    hl_r, hl_g = high_level(ref, geom), high_level(gen, geom)
    binning = default_binning(geom, ref)
    low_r, low_g = (np.log1p(1e3 * voxelise(b, geom, binning, 1.0)
                             / b.primaries.energy_mev[:, None]) for b in (ref, gen))
    metrics = compare_with_floor(hl_r, hl_g, seed=seed, low_ref=low_r, low_gen=low_g)
    metrics["energy_bins"] = compare_in_energy_bins(
        hl_r, hl_g, ref.primaries.energy_mev, gen.primaries.energy_mev, seed=seed)
    metrics["particles"] = compare_per_particle(hl_r, hl_g, ref.primaries.pdg,
                                                gen.primaries.pdg, seed=seed)
    if regressor is not None:
        metrics["regression"] = regression_check(regressor, ref, gen)
    metrics.update({"reference_path": str(reference), "generated_path": str(generated),
                    "n_reference": len(ref), "n_generated_total": len(gen),
                    "geometry_hash": geom.hash, "fastshower_version": __version__,
                    "reference_metadata": meta_r, "generated_metadata": meta_g})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))

    long_r, long_g = layer_energies(ref, geom), layer_energies(gen, geom)
    figures = {
        "summary": _png(summary_figure(hl_r, hl_g, long_r, long_g, depth_x0(geom), metrics),
                        out / "summary.png"),
        "observables": _png(observables_figure(hl_r, hl_g), out / "observables.png"),
        "profiles": _png(profiles_figure(
            long_r, long_g, depth_x0(geom),
            radial_profile(ref, geom), radial_profile(gen, geom), RADIAL_EDGES,
            ak.to_numpy(ak.flatten(ref.cell_energy)), ak.to_numpy(ak.flatten(gen.cell_energy))),
            out / "profiles.png"),
    }
    e_r, e_g = ref.primaries.energy_mev, gen.primaries.energy_mev
    for i, b in enumerate(metrics["energy_bins"] if len(metrics["energy_bins"]) > 1 else []):
        r = (e_r >= b["e_min_mev"]) & (e_r < b["e_max_mev"])
        g = (e_g >= b["e_min_mev"]) & (e_g < b["e_max_mev"])
        name = f"{b['e_min_mev'] / 1e3:.3g}-{b['e_max_mev'] / 1e3:.3g} GeV"
        figures[name] = _png(observables_figure({k: v[r] for k, v in hl_r.items()},
                                                {k: v[g] for k, v in hl_g.items()}),
                             out / f"energy_bin_{i}.png")
    for name, batch in (("reference shower", ref), ("generated shower", gen)):
        path = plot_shower(batch, 0, geom, out / f"{name.replace(' ', '_')}.png")
        figures[name] = base64.b64encode(path.read_bytes()).decode()
    (out / "report.html").write_text(_html(metrics, figures))
    return metrics


class Regressor(Protocol):
    """An energy regression handed to the report (training.regress.RegressionRun is one):
    predicted energies (GeV) of a batch of showers; ``source`` names it in the report."""

    source: str

    def __call__(self, batch: ShowerBatch) -> np.ndarray: ...


def regression_check(regressor: Regressor, ref: ShowerBatch, gen: ShowerBatch,
                     n_bins: int = 4) -> dict:
    """Response and resolution of a regression on reference and generated showers."""
    e_r, e_g = (b.primaries.energy_mev / 1e3 for b in (ref, gen))
    edges = np.geomspace(min(e_r.min(), e_g.min()), max(e_r.max(), e_g.max()) * 1.0001,
                         n_bins + 1)
    return {"run": regressor.source,
            "reference": response_resolution(regressor(ref), e_r, edges),
            "generated": response_resolution(regressor(gen), e_g, edges)}


def _regression_table(r: dict | None) -> str:
    if r is None:
        return "<p>No regression model given (validate --regressor RUN).</p>"
    rows = "".join(
        f"<tr><td>{a['e_min_gev']:.3g}-{a['e_max_gev']:.3g} GeV</td><td>{a['response']:.4f}</td>"
        f"<td>{b['response']:.4f}</td><td>{a['resolution']:.4f}</td><td>{b['resolution']:.4f}"
        "</td></tr>" for a, b in zip(r["reference"]["bins"], r["generated"]["bins"],
                                     strict=False))
    ref, gen = r["reference"], r["generated"]
    return (f"<p>Energy regression <code>{html.escape(r['run'])}</code> (trained on Geant4) "
            "applied to both samples.</p><table><tr><th>incident energy</th><th>response "
            "Geant4</th><th>generated</th><th>resolution Geant4</th><th>generated</th></tr>"
            f"<tr><td><b>all</b></td><td>{ref['response']:.4f}</td><td>{gen['response']:.4f}"
            f"</td><td>{ref['resolution']:.4f}</td><td>{gen['resolution']:.4f}</td></tr>"
            f"{rows}</table>")


def _bins_table(bins: list[dict]) -> str:
    if not bins:
        return "<p>No bin holds enough showers.</p>"
    names = list(bins[0]["generated"]["observables"])
    head = "<tr><th>observable</th>" + "".join(
        f"<th>{b['e_min_mev'] / 1e3:.3g}-{b['e_max_mev'] / 1e3:.3g} GeV "
        f"({b['n_reference']} / {b['n_generated']})</th>" for b in bins) + "</tr>"
    auc = "<tr><td><b>classifier AUC</b></td>" + "".join(
        f"<td><b>{b['generated']['classifier']['auc']:.3f}</b> <span class=floor>"
        f"{b['floor']['classifier']['auc']:.3f}</span></td>" for b in bins
        if "classifier" in b["generated"]) + "</tr>" if "classifier" in bins[0]["generated"] else ""
    rows = auc + "".join(
        f"<tr><td>{k}</td>" + "".join(
            f"<td>{b['generated']['observables'][k]['wasserstein']:.3f} <span class=floor>"
            f"{b['floor']['observables'][k]['wasserstein']:.3f}</span></td>" for b in bins)
        + "</tr>" for k in names)
    return f"<table>{head}{rows}</table>"


def _particles_table(rows: list[dict]) -> str:
    if len(rows) < 2:
        return "".join(f"<p>One particle: {r['particle']}.</p>" for r in rows)
    cells = "".join(
        f"<tr><td>{r['particle']}</td><td>{r['n_reference']} / {r['n_generated']}</td>"
        f"<td>{r['generated']['classifier']['auc']:.3f} ± "
        f"{r['generated']['classifier']['auc_std']:.3f}</td><td class=floor>"
        f"{r['floor']['classifier']['auc']:.3f}</td><td>{r['generated']['fpd']:.4f}</td>"
        f"<td class=floor>{r['floor']['fpd']:.4f}</td></tr>" for r in rows)
    return ("<table><tr><th>particle</th><th>showers (reference / generated)</th><th>classifier "
            f"AUC</th><th>floor</th><th>FPD</th><th>floor</th></tr>{cells}</table>")


def _html(m: dict, figures: dict[str, str]) -> str:
    g, f = m["generated"], m["floor"]
    rows = "".join(
        f"<tr><td>{k}</td>" + "".join(
            f"<td>{g['observables'][k][x]:.3f}</td><td class=floor>{f['observables'][k][x]:.3f}"
            "</td>" for x in ("wasserstein", "separation_power", "ks")) + "</tr>"
        for k in g["observables"])
    meta_g = m["generated_metadata"]
    notes = {meta.get("notes") for meta in (m["reference_metadata"], meta_g) if meta.get("notes")}
    if meta_g.get("generator") == "geant4":
        questions = "<p>The generated sample is Geant4: no model questions apply.</p>"
    else:
        questions = "<table>" + "".join(
            f"<tr><td>{label}</td><td>{html.escape(str(meta_g.get(key, 'not recorded')))}</td>"
            "</tr>" for key, label in MODEL_QUESTIONS.items()) + "</table>"
    imgs = "".join(f"<h3>{name}</h3><img src='data:image/png;base64,{data}'>"
                   for name, data in figures.items())
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>fastshower validation</title><style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child {{ text-align: left; }} .floor {{ color: #888; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>fastshower validation report</h1>
<p>reference: <code>{html.escape(m['reference_path'])}</code> ({m['n_reference']} showers, generator
{html.escape(str(m['reference_metadata'].get('generator')))}) &mdash; generated:
<code>{html.escape(m['generated_path'])}</code> ({m['n_generated_total']} showers, generator
{html.escape(str(meta_g.get('generator')))}); geometry {m['geometry_hash'][:12]};
fastshower {m['fastshower_version']}.</p>
{''.join(f'<p><b>Note:</b> {html.escape(n)}</p>' for n in notes)}
<h2>Summary</h2>
<p>Each number is for the generated sample against one half of the reference
({m['n_reference_half']} showers vs {m['n_generated']}); the grey number beside it is the noise
floor: the same metric for the other half of the reference.</p>
<table><tr><th></th><th>generated</th><th>floor</th></tr>
<tr><td>classifier AUC (0.5 = indistinguishable; {g['classifier']['folds']}-fold
cross-validated: mean ± its standard error)</td>
<td>{g['classifier']['auc']:.3f} ± {g['classifier']['auc_std']:.3f}</td>
<td class=floor>{f['classifier']['auc']:.3f} ± {f['classifier']['auc_std']:.3f}</td></tr>
<tr><td>classifier AUC, low level ({LOW_LEVEL})</td>
<td>{g['classifier_low_level']['auc']:.3f} ± {g['classifier_low_level']['auc_std']:.3f}</td>
<td class=floor>{f['classifier_low_level']['auc']:.3f} ±
{f['classifier_low_level']['auc_std']:.3f}</td></tr>
<tr><td>FPD (standardised high-level features)</td><td>{g['fpd']:.4f}</td>
<td class=floor>{f['fpd']:.4f}</td></tr>
<tr><td>KPD</td><td>{g['kpd']:.5f}</td><td class=floor>{f['kpd']:.5f}</td></tr></table>
<h2>Per observable</h2>
<table><tr><th>observable</th><th>W1 / σ</th><th>floor</th><th>separation power</th>
<th>floor</th><th>KS</th><th>floor</th></tr>{rows}</table>
<h2>Per particle</h2>
{_particles_table(m["particles"])}
<h2>In bins of incident energy</h2>
<p>High-level classifier AUC, then W1 / σ per observable (floor in grey), per bin.</p>
{_bins_table(m["energy_bins"])}
<h2>Energy regression (physics-level test)</h2>{_regression_table(m.get("regression"))}
<h2>Fast-simulation questions</h2>{questions}
<h2>Plots</h2>{imgs}
</body></html>
"""
