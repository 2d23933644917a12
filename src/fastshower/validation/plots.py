"""Comparison plots: overlaid histograms with ratio panels, longitudinal and radial profiles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402

LABELS = {
    "e_vis": "visible energy [MeV]", "response": "E_vis / E_inc",
    "e_dedx_over_e_inc": "dE/dx-weighted E / E_inc", "n_hits": "hits above 0.5 MIP",
    "centroid_depth_x0": "energy-weighted depth [X0]", "start_layer": "shower start layer",
    "max_layer": "shower maximum layer", "centre_x": "centre of energy x - axis [mm]",
    "centre_y": "centre of energy y - axis [mm]", "width_r": "energy-weighted radius [mm]",
    "core_fraction": "energy fraction within 2 cm",
}


def _ratio_axes(fig, spec):
    top = fig.add_subplot(spec[0])
    bottom = fig.add_subplot(spec[1], sharex=top)
    plt.setp(top.get_xticklabels(), visible=False)
    return top, bottom


def _hist_pair(top, bottom, ref, gen, edges, names):
    h_r, _ = np.histogram(ref, edges)
    h_g, _ = np.histogram(gen, edges)
    n_r, n_g = max(h_r.sum(), 1), max(h_g.sum(), 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    top.stairs(h_r / n_r, edges, label=names[0], color="black", lw=1.5)
    top.stairs(h_g / n_g, edges, label=names[1], color="tab:red", lw=1.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (h_g / n_g) / (h_r / n_r)
        err = ratio * np.sqrt(1 / np.maximum(h_g, 1) + 1 / np.maximum(h_r, 1))
    ok = (h_r > 0) & (h_g > 0)
    bottom.errorbar(centres[ok], ratio[ok], err[ok], fmt="o", ms=3, color="tab:red")
    bottom.axhline(1, color="black", lw=0.8)
    bottom.set_ylim(0.5, 1.5)
    bottom.set_ylabel("ratio", fontsize=11)


def observables_figure(ref: dict, gen: dict, names=("Geant4", "generated")):
    """A grid of normalised histograms of every high-level observable, with ratio panels."""
    plt.style.use(mplhep.style.CMS)
    keys = list(ref)
    cols = 4
    rows = int(np.ceil(len(keys) / cols))
    fig = plt.figure(figsize=(5.5 * cols, 5 * rows))
    outer = fig.add_gridspec(rows, cols, hspace=0.35, wspace=0.3)
    for i, k in enumerate(keys):
        spec = outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        top, bottom = _ratio_axes(fig, spec)
        lo, hi = np.quantile(np.concatenate([ref[k], gen[k]]), [0.002, 0.998])
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        _hist_pair(top, bottom, ref[k], gen[k], edges, names)
        bottom.set_xlabel(LABELS.get(k, k), fontsize=12)
        top.tick_params(labelsize=10)
        bottom.tick_params(labelsize=10)
        if i == 0:
            top.legend(fontsize=11)
    return fig


def profiles_figure(long_r, long_g, depth, rad_r, rad_g, radial_edges, hits_r, hits_g,
                    names=("Geant4", "generated")):
    """Mean longitudinal and radial profiles and the hit-energy spectrum, with ratios."""
    plt.style.use(mplhep.style.CMS)
    fig = plt.figure(figsize=(20, 6))
    outer = fig.add_gridspec(1, 3, wspace=0.3)
    ring_area = np.pi * np.diff(radial_edges**2)
    panels = [(depth, long_r.mean(0), long_g.mean(0), "depth [X0]", "mean energy [MeV]", False),
              (0.5 * (radial_edges[1:] + radial_edges[:-1]), rad_r.mean(0) / ring_area,
               rad_g.mean(0) / ring_area, "distance to axis [mm]", "mean energy [MeV/mm²]", True)]
    for j, (xs, a, b, xl, yl, log) in enumerate(panels):
        spec = outer[j].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        top, bottom = _ratio_axes(fig, spec)
        top.plot(xs, a, "-", color="black", label=names[0])
        top.plot(xs, b, "--", color="tab:red", label=names[1])
        top.set_ylabel(yl, fontsize=12)
        if log:
            top.set_yscale("log")
        else:  # the depth range where the reference has energy
            used = xs[a > 1e-3 * a.max()]
            top.set_xlim(used.min() - 1, used.max() + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            bottom.plot(xs, b / a, "o", ms=3, color="tab:red")
        bottom.axhline(1, color="black", lw=0.8)
        bottom.set_ylim(0.5, 1.5)
        bottom.set_xlabel(xl, fontsize=12)
        top.legend(fontsize=11)
    spec = outer[2].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    top, bottom = _ratio_axes(fig, spec)
    edges = np.geomspace(1e-3, max(hits_r.max(), hits_g.max(), 1e-2) * 1.01, 41)
    _hist_pair(top, bottom, hits_r, hits_g, edges, names)
    top.set_xscale("log")
    top.set_yscale("log")
    bottom.set_xlabel("cell energy [MeV]", fontsize=12)
    return fig


def summary_figure(ref: dict, gen: dict, long_r, long_g, depth, metrics: dict,
                   names=("Geant4", "generated")):
    """One page: response, depth and hit count histograms, the longitudinal profile, and the
    headline metrics beside their noise floor."""
    plt.style.use(mplhep.style.CMS)
    fig = plt.figure(figsize=(18, 11))
    outer = fig.add_gridspec(2, 3, hspace=0.35, wspace=0.3)
    for i, k in enumerate(("e_dedx_over_e_inc", "centroid_depth_x0", "n_hits",
                           "width_r")):
        spec = outer[i // 3, i % 3].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        top, bottom = _ratio_axes(fig, spec)
        lo, hi = np.quantile(np.concatenate([ref[k], gen[k]]), [0.002, 0.998])
        _hist_pair(top, bottom, ref[k], gen[k], np.linspace(lo, hi if hi > lo else lo + 1, 31),
                   names)
        bottom.set_xlabel(LABELS.get(k, k), fontsize=13)
        if i == 0:
            top.legend(fontsize=12)
    ax = fig.add_subplot(outer[1, 1])
    ax.plot(depth, long_r.mean(0), "-", color="black", label=names[0])
    ax.plot(depth, long_g.mean(0), "--", color="tab:red", label=names[1])
    ax.set_xlabel("depth [X0]", fontsize=13)
    ax.set_ylabel("mean energy per layer [MeV]", fontsize=13)
    ax.legend(fontsize=12)
    ax = fig.add_subplot(outer[1, 2])
    ax.axis("off")
    g, f = metrics["generated"], metrics["floor"]
    lines = [f"{'':24s}{'value':>9s}{'floor':>9s}",
             f"{'classifier AUC (high)':24s}{g['classifier']['auc']:9.3f}"
             f"{f['classifier']['auc']:9.3f}"]
    if "classifier_low_level" in g:
        lines.append(f"{'classifier AUC (low)':24s}{g['classifier_low_level']['auc']:9.3f}"
                     f"{f['classifier_low_level']['auc']:9.3f}")
    lines += [f"{'FPD':24s}{g['fpd']:9.3f}{f['fpd']:9.3f}",
              f"{'KPD':24s}{g['kpd']:9.4f}{f['kpd']:9.4f}"]
    worst = sorted(g["observables"], key=lambda k: -g["observables"][k]["wasserstein"])[:4]
    lines += ["", "largest W1/σ:"] + [
        f"  {k:22s}{g['observables'][k]['wasserstein']:9.3f}"
        f"{f['observables'][k]['wasserstein']:9.3f}" for k in worst]
    ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=13, va="top")
    return fig
