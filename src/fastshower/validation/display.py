"""Single-shower event display: cell energies of a few layers and the longitudinal profile."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from fastshower.geometry import Geometry  # noqa: E402
from fastshower.simhits import ShowerBatch  # noqa: E402


def plot_shower(batch: ShowerBatch, index: int, geom: Geometry, out: str | Path,
                n_maps: int = 4) -> Path:
    """Write a PNG of shower ``index``: a 3-D view of its cells, energy maps of the layers
    around its maximum, and the energy per layer against depth in X0."""
    ids = ak.to_numpy(batch.cell_id[index]).astype(np.int64)
    energy = ak.to_numpy(batch.cell_energy[index]).astype(np.float64)
    c = geom.cells
    layer = c["layer"][ids]
    profile = np.bincount(layer, weights=energy, minlength=len(geom.layers))
    peak = int(np.argmax(profile))
    window = np.arange(max(peak - n_maps // 2, 0), min(peak + n_maps, len(profile)))
    shown = [lay for lay in window if profile[lay] > 0][:n_maps]
    plt.style.use(mplhep.style.CMS)
    n_panels = len(shown) + 2
    fig = plt.figure(figsize=(6 * n_panels, 6))
    ax3d = fig.add_subplot(1, n_panels, 1, projection="3d")
    axes = [fig.add_subplot(1, n_panels, i + 2) for i in range(n_panels - 1)]
    norm = LogNorm(vmin=max(energy.min(), 1e-3), vmax=energy.max())
    big = energy > 1e-3 * energy.max()
    ax3d.scatter(c["z"][ids][big], c["x"][ids][big], c["y"][ids][big], c=energy[big],
                 cmap="viridis", norm=norm, s=4 + 40 * energy[big] / energy.max())
    ax3d.set_xlabel("z [mm]", fontsize=11)
    ax3d.set_ylabel("x [mm]", fontsize=11)
    ax3d.set_zlabel("y [mm]", fontsize=11)
    ax3d.tick_params(labelsize=8)
    for ax, lay in zip(axes[:-1], shown, strict=True):
        mine = ids[layer == lay]
        polys = [p[:n] for p, n in zip(c["corners"][mine], c["n_corners"][mine], strict=True)]
        coll = PolyCollection(polys, array=energy[layer == lay], cmap="viridis", norm=norm,
                              edgecolors="none")
        ax.add_collection(coll)
        cx, cy = np.average(c["x"][mine], weights=energy[layer == lay]), np.average(
            c["y"][mine], weights=energy[layer == lay])
        ax.set_xlim(cx - 60, cx + 60)
        ax.set_ylim(cy - 60, cy + 60)
        ax.set_aspect("equal")
        ax.set_title(f"layer {lay} ({geom.layers[lay].depth_x0:.1f} X0)", fontsize=14)
        ax.set_xlabel("x [mm]", fontsize=14)
    fig.colorbar(coll, ax=axes[:-1], label="cell energy [MeV]", shrink=0.8)
    depth = [lay.depth_x0 for lay in geom.layers]
    axes[-1].step(depth, profile, where="mid")
    axes[-1].set_xlim(0, depth[min(len(depth) - 1, int(np.flatnonzero(profile > 0)[-1]) + 1)])
    axes[-1].set_xlabel("depth [X0]", fontsize=14)
    axes[-1].set_ylabel("energy per layer [MeV]", fontsize=14)
    e0 = batch.primaries.energy_mev[index] / 1000
    axes[-1].set_title(f"{e0:.0f} GeV, pdg {batch.primaries.pdg[index]}", fontsize=14)
    out = Path(out)
    fig.savefig(out, dpi=70, bbox_inches="tight")
    plt.close(fig)
    return out
