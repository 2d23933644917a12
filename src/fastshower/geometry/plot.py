"""Pictures of a geometry: one layer's cells coloured by type, with the neighbour edges drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fastshower.geometry.detector import Geometry  # noqa: E402
from fastshower.geometry.neighbours import LONGITUDINAL, SI_SC  # noqa: E402

_COLOURS = {0.12: "#9ecae1", 0.2: "#6baed6", 0.3: "#3182bd", 3.0: "#fdae6b"}
_LABELS = {0.12: "silicon 120 µm", 0.2: "silicon 200 µm", 0.3: "silicon 300 µm",
           3.0: "scintillator"}


def border_layer(geom: Geometry) -> int:
    """The layer with the most silicon-scintillator edges (else the most cells)."""
    src = geom.edges[0][geom.edge_kind == SI_SC]
    counts = np.bincount(geom.cells["layer"][src], minlength=len(geom.layers))
    if counts.max() == 0:
        counts = np.bincount(geom.cells["layer"], minlength=len(geom.layers))
    return int(np.argmax(counts))


def plot_layer(geom: Geometry, layer: int, out: str | Path, max_cells: int = 20000) -> Path:
    """Write a PNG of ``layer``: cells by type and thickness, in-layer and border edges."""
    c = geom.cells
    idx = np.flatnonzero(c["layer"] == layer)
    if len(idx) > max_cells:  # a full layer: show the window around the densest border region
        cx, cy = np.median(c["x"][idx]), np.median(c["y"][idx])
        d = np.hypot(c["x"][idx] - cx, c["y"][idx] - cy)
        idx = idx[np.argsort(d)[:max_cells]]
    chosen = np.zeros(geom.n_cells, dtype=bool)
    chosen[idx] = True
    plt.style.use(mplhep.style.CMS)
    fig, ax = plt.subplots(figsize=(10, 10))
    thick = np.round(c["thickness"][idx].astype(np.float64), 2)
    colours = [_COLOURS.get(t, "grey") for t in thick]
    polys = [p[: n] for p, n in zip(c["corners"][idx], c["n_corners"][idx], strict=True)]
    ax.add_collection(PolyCollection(polys, facecolors=colours, edgecolors="white",
                                     linewidths=0.3))
    src, dst = geom.edges
    sel = chosen[src] & chosen[dst] & (src < dst) & (geom.edge_kind != LONGITUDINAL)
    xy = np.stack([c["x"], c["y"]], -1)
    border = geom.edge_kind[sel] == SI_SC
    seg = np.stack([xy[src[sel]], xy[dst[sel]]], 1)
    ax.add_collection(LineCollection(seg[~border], colors="black", linewidths=0.4, alpha=0.6))
    ax.add_collection(LineCollection(seg[border], colors="red", linewidths=1.2))
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.set_xlabel("x [mm]")
    ax.set_ylabel("y [mm]")
    lay = geom.layers[layer]
    ax.set_title(f"{lay.section} layer {layer}, z = {lay.z:.1f} mm, "
                 f"{lay.depth_x0:.1f} X0, {len(idx)} cells", fontsize=14)
    handles = [Patch(color=_COLOURS[t], label=_LABELS[t]) for t in sorted(set(thick))
               if t in _COLOURS]
    handles += [plt.Line2D([], [], color="black", lw=0.8, label="neighbour edge"),
                plt.Line2D([], [], color="red", lw=1.5, label="silicon-scintillator edge")]
    ax.legend(handles=handles, loc="upper right", fontsize=12, framealpha=0.9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
