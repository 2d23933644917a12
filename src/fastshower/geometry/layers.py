"""Longitudinal structure: sampling layers, the material in front of each sensor, depths in X0.

A layer is the absorber stack in front of a sensor plane plus the sensor plane itself. Stacks are
laid out along z from the calorimeter front face; air gaps fill each section to its target length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fastshower.geometry.materials import material

Slab = tuple[str, float]  # (material name, thickness in mm)


@dataclass(frozen=True)
class Layer:
    """One sampling layer. Lengths in mm; ``z`` is the sensor-plane centre (signed)."""

    index: int
    section: str
    z: float
    absorbers: tuple[Slab, ...]
    sensor_gap: float
    depth_x0: float
    depth_lambda: float

    @property
    def zside(self) -> int:
        return 1 if self.z > 0 else -1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Layer:
        d = dict(d)
        d["absorbers"] = tuple((str(m), float(t)) for m, t in d["absorbers"])
        return Layer(**d)


def stack_length(slabs: list[Slab]) -> float:
    return float(sum(t for _, t in slabs))


def lay_out(
    sections: list[tuple[str, list[list[Slab]], float, float | None]],
    z_front: float,
) -> list[Layer]:
    """Place layers along +z.

    ``sections``: (name, per-layer absorber stacks, sensor gap in mm, target section length in mm
    or None). Where a target length is given, the spare length is spread as equal air gaps in
    front of each layer's absorbers. Depths are counted to the sensor centre, sensors included.
    """
    layers: list[Layer] = []
    z = z_front
    x0 = lam = 0.0
    for name, stacks, gap, target in sections:
        material_length = sum(stack_length(s) for s in stacks) + gap * len(stacks)
        air = 0.0
        if target is not None:
            air = (target - material_length) / len(stacks)
            if air < 0:
                raise ValueError(f"section {name}: material ({material_length:.1f} mm) "
                                 f"exceeds its length ({target:.1f} mm)")
        for stack in stacks:
            slabs = ([("G4_AIR", air)] if air > 0 else []) + list(stack)
            for m, t in slabs:
                x0 += t / material(m).x0_mm
                lam += t / material(m).lambda_mm
                z += t
            # Sensors are counted as silicon at half the gap for the depth: a small term.
            half = 0.5 * gap
            x0_half = half / material("G4_Si").x0_mm
            lam_half = half / material("G4_Si").lambda_mm
            layers.append(Layer(len(layers), name, z + half, tuple(slabs), gap,
                                x0 + x0_half, lam + lam_half))
            z += gap
            x0 += 2 * x0_half
            lam += 2 * lam_half
    return layers


def mirror(layers: list[Layer]) -> list[Layer]:
    """The same layers at -z (the second endcap), appended with new indices."""
    n = len(layers)
    return layers + [
        Layer(n + lay.index, lay.section, -lay.z, lay.absorbers, lay.sensor_gap,
              lay.depth_x0, lay.depth_lambda)
        for lay in layers
    ]


def next_layer(layers: list[Layer], with_cells: np.ndarray | None = None) -> np.ndarray:
    """Index of the next layer deeper in the same endcap, -1 for the last one; with the cells'
    layer indices ``with_cells``, the next layer that has cells (layers without are skipped)."""
    out = np.full(len(layers), -1, dtype=np.int64)
    if with_cells is not None:
        have = set(np.unique(with_cells).tolist())
        layers = [lay for lay in layers if lay.index in have]
    for a, b in zip(layers[:-1], layers[1:], strict=True):
        if a.zside == b.zside:
            out[a.index] = b.index
    return out
