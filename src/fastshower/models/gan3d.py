"""3DGAN (issue 18): the ECAL of the CLIC-like grid as a 3-D image and a conditional 3-D
convolutional GAN whose discriminator also regresses the physics (primary energy, deposited
energy, incidence angle), after the CERN openlab work "Deep Learning for fast simulation"
(Khattak et al., 2018).

The images (shower coordinates: they follow an inclined shower, centred layer by layer on the
cell that the primary's straight line crosses): a fine one, the ``WINDOW`` x ``WINDOW`` cells
of each of the ``LAYERS`` ECAL layers around that cell, and a coarse one of ``COARSE`` x
``COARSE`` cells of ~25-30 mm on ``DEPTH`` layers: in the ECAL, blocks of ``BLOCK`` x ``BLOCK``
cells around the fine window (out to +-27 cells), then the first ``HCAL_LAYERS`` HCAL layers
cell by cell. Why both (benchmarks/gan3d_images.py, on 1,950 held-out showers): Geant4's own
showers cut to the original's 25 x 25 x 25 window are told from the whole showers at AUC 0.999
(the window holds 99.2 % of the ECAL energy but 94.5 % of its hits, and none of the 3.5 % of
the visible energy in the HCAL: the width, the response and the hit count give it away); cut
to the fine + coarse images (cells down to FLOOR_MIP) they are at AUC 0.56 (floor 0.49). Cell
values are ``SCALE * (e / E_p) ** power`` (by default the square root, which compresses the
range of cell energies; the original used a power of 0.85 in later versions) or ``ln(1 + e /
floor)`` (``Values``); generated cells below the floor (``FLOOR_MIP``) are dropped.

Training (the model owns its loss): both players step together in the trainer's one optimiser
step. The discriminator's terms use real images and detached fakes; the generator's terms run
the fakes through the discriminator with its parameters detached (torch.func.functional_call),
so each player's gradient comes from its own terms only (simultaneous gradient steps instead of
the original's alternating ones). Loss per player: the non-saturating adversarial BCE plus the
auxiliary regressions, as the original: mean absolute percentage error of the primary energy
and of the deposited energy (here as the response E_dep / E_p: the images are in units of
E_p, so the response is what they hold), absolute error of the incidence angle in radians (a
percentage of an angle near 0 is meaningless). An option adds to the generator's loss the
exact response of each generated image against that of the real shower drawn with the same
conditions (mean absolute percentage error, ``response_weight``; off by default: see
docs/models.md), where the original relied on the discriminator's regression of the energy
sum. Another option (``response_law``) separates the response from the shape, as the graph
generators do: a small network gives a Gaussian law of ln(E_dep / E_p) given the conditions
(fitted by likelihood, part of the generator's stage), the generator's image is rescaled to
the real shower's response in training and to a response drawn from the law in generation, so
the adversarial game is about the shape alone. A third option (``physics_weight``) adds to
the generator's loss the distance between the laws of 34 observables of its showers and of
Geant4's in the mini-batch, given the conditions (Observables, physics_distance: the hit
count, width, core fraction and centre of the validation suite and each layer's energy
fraction, as smooth functions of the cell energies): the adversarial game alone, after 3,000
steps, had left the width and core fraction varying five times more than Geant4's from one
shower to the next and the hit count 40 % short (docs/models.md); the later 3DGAN (Khattak
et al., EPJC 2022) also added domain-related terms to its loss. Images are generated around the
centre of the axis cell and moved to the primary's line by AxisShift (option ``shift``).
Session 19's options (docs/models.md has their measurements): ``leakage_law`` (the HCAL's share
of the energy from a learned law given the conditions and the ECAL depth, as ``response_law``
does for the total), ``depth_shift`` (the generator slides each shower along its layers,
Generator), ``d_observables`` (the discriminator also sees each shower's observables).
Session 20's: ``bias_maps`` (a learned bias per voxel, linear in ln E, before the generator's
last ReLU; ``bias_init: mean`` starts it at the training images' mean shower), ``voxel_scale``
(per-voxel value units, Values: the far cells lifted so that both networks see them).
Session 21's: ``summaries`` (the shower's depth, width, core fraction or hit count as further
conditions of both players, Geant4's in training and drawn from their joint law in generation,
SummaryLaw: the image GAN as the second stage of a two-stage generator),
``physics_direction`` (the physics term's fit also in the direction).
Session 22's: ``summary_weight`` (each generated shower made to have the summaries it was
given: a Huber loss of its standardised summaries against them; without it the generator
followed the depth closely, correlation 0.97, but the core fraction loosely, 0.73, with 1.37
times Geant4's spread; with it 0.75-0.80).
Stabilisation (without it, the discriminator won within a few hundred steps and the generator
never learnt): real labels smoothed to 0.9, an R1 gradient penalty on real images (``r1``),
Adam's beta1 = 0.5, and the generator's weights chosen by the FPD of its validation showers,
not by its loss.

Approximations, named: the axis shift shares each voxel's energy with its neighbours
linearly (AxisShift); with ``leakage_law`` the HCAL's share is a Gaussian in its logit given
the conditions and the ECAL's mean layer, the ECAL and HCAL parts each rescaled as a whole;
with ``summaries`` their law's shape and correlations are pooled over the spectrum and the
angles (SummaryLaw); a coarse ECAL voxel's energy goes onto one cell of its block, drawn
uniformly (far from the axis a shower leaves single, isolated hits; the AUC above includes
it); energy beyond the images (0.02 % of the visible energy) is not generated (the training
data record how much); hit times are times of flight; cells of one layer are on the grid's
lattice only (square cells).
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.geometry.grid import GridSegmentation, lattice_cells
from fastshower.geometry.showers import axis_points, layer_z, line_at
from fastshower.models.base import NetworkGenerator, TrainingRanges
from fastshower.models.showers import particle_index, particle_names, to_batch
from fastshower.simhits import Primaries, ShowerBatch
from fastshower.validation.observables import CORE_RADIUS

LAYERS = 25  # the grid's ECAL
WINDOW = 25  # the fine image: cells per side of each ECAL layer (odd: the axis cell in the middle)
BLOCK = 5  # the coarse image's ECAL cells: blocks of BLOCK x BLOCK grid cells
COARSE = 11  # the coarse image: cells per side (ECAL blocks, HCAL cells), the axis cell middle
HCAL_LAYERS = 15  # the first HCAL layers, in the coarse image
DEPTH = LAYERS + HCAL_LAYERS  # the coarse image's layers
FINE_SHAPE, COARSE_SHAPE = (LAYERS, WINDOW, WINDOW), (DEPTH, COARSE, COARSE)
FINE_VOXELS = LAYERS * WINDOW ** 2  # the fine image's voxels come first in a flat image
VOXELS = FINE_VOXELS + DEPTH * COARSE ** 2  # one shower: both images, flattened
# the smallest cell energy the images hold and the generator places, in MIPs: below the readout
# threshold (half a MIP) too, since the validation's visible energy and width count Geant4's
# sim hits of every energy (placed at half a MIP, Geant4's own showers cut to the images are
# told from the whole ones at AUC 0.80 instead of 0.55: benchmarks/gan3d_images.py)
FLOOR_MIP = 0.1
IMAGES = {"fine": list(FINE_SHAPE), "coarse": list(COARSE_SHAPE), "block": BLOCK}
HIT_MIP = 0.5  # the validation's hit threshold (observables.high_level's threshold_mip), in MIPs
SCALE = 10.0  # power values: SCALE * (e / E_p) ** power
LOG_MAX = 30.0  # log values above it are read as it (e0 e^30 ~ 1e11 MeV): exp never overflows


class Gan3DConfig(BaseModel):
    """Sizes of the two networks, showers per step and the auxiliary terms' weight."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    latent: int = Field(64, gt=0)
    channels: int = Field(16, gt=0)
    batch: int = Field(32, gt=0)
    aux_weight: float = Field(0.5, ge=0)
    response_weight: float = Field(0.0, ge=0)  # the generator's exact response term (off:
    # with weight 2-5 the generator spread its energy over the whole window, docs/models.md)
    r1: float = Field(2.0, ge=0)  # gradient penalty on real images, gamma/2 |grad D|^2
    # the response E_dep / E_p from a learned Gaussian law in ln, the generator's image as a
    # shape rescaled to it (False: the generator's own sum, as the original; docs/models.md)
    response_law: bool = False
    # cells below the floor (FLOOR_MIP) cut out of real and generated images (the generator's
    # smoothly), so the discriminator sees, and the response law fills, the cells placed
    sparse: bool = False
    values: Literal["sqrt", "log"] = "sqrt"  # the image's cell values (Values)
    power: float = Field(0.5, gt=0.0, le=1.0)  # of the sqrt values (0.5: the square root)
    minibatch_std: bool = False  # the discriminator sees the mini-batch's spread (Discriminator)
    # the discriminator's dense part also sees each shower's observables (Observables,
    # standardised by the training sample's) and its (ln E, theta): their joint law per shower
    d_observables: bool = False
    # images made around the axis cell's centre, moved to the primary's line (AxisShift)
    shift: bool = False
    # weight of the generator's term that brings the law of each observable of its showers
    # given (ln E, theta) to Geant4's in each mini-batch (Observables, energy_distance); 0: off
    physics_weight: float = Field(0.0, ge=0)
    # how each observable is compared given the conditions: jointly with (ln E, theta), or its
    # residual from a linear fit in (ln E, theta) to the Geant4 showers (physics_distance)
    # (``correlated``: also the residuals of the scalar observables jointly)
    physics_given: Literal["joint", "residual", "correlated"] = "joint"
    # the physics term's fit also in the direction's transverse components (sin theta cos phi,
    # sin theta sin phi): Geant4's energy centre moves with them (correlation 0.26)
    physics_direction: bool = False
    # the fraction of the image's energy in the HCAL from a learned law given the conditions
    # and the shower's depth in the ECAL, the generator's ECAL and HCAL parts rescaled to it
    leakage_law: bool = False
    # the largest depth shift (layers) the generator may give a shower (Generator.depth); 0: off
    depth_shift: float = Field(0.0, ge=0, le=5)
    # per-voxel value units (Values): each voxel's energy in units of (its mean share of the
    # primary's energy in the training images / the core voxel's) ** voxel_scale; 0: off
    voxel_scale: float = Field(0.0, ge=0, le=1)
    # the generator's images get a learned bias per voxel (linear in ln E) before their last
    # ReLU (Generator): sharp structure fixed in space, which transposed convolutions make badly
    bias_maps: bool = False
    # their start: zero, or the training images' mean values (linear in ln E, by least
    # squares) with the convolutions' last layers scaled down tenfold (the mean shower first)
    bias_init: Literal["zero", "mean"] = "zero"
    # observables of the shower (Observables: its depth, i.e. energy-weighted mean layer, hit
    # count, width, core fraction) as further conditions of both players (SummaryLaw): Geant4's
    # own in training, drawn from the training sample's joint law in generation
    summaries: list[Literal["depth", "hits", "width", "core"]] = []
    # weight of the generator's term that makes each shower have the summaries it was given
    # (Huber loss of its standardised summaries against the given ones; 0: off)
    summary_weight: float = Field(0.0, ge=0)
    # the fine image's last layer: a transposed convolution (kernel 4) or the first version's
    # transposed convolution to C channels and a 3 x 3 x 3 convolution (4 times slower)
    last: Literal["transposed", "convolution"] = "transposed"


def _require_grid(geom: Geometry) -> GridSegmentation:
    """The grid segmentation of ``geom``; one clear error for a geometry gan3d cannot use."""
    seg = geom.segmentation
    if not isinstance(seg, GridSegmentation) or len(geom.layers) < DEPTH:
        raise FastShowerError(f"gan3d needs a grid geometry (square cells, at least {DEPTH} "
                              "layers: fastshower geometry build --builder grid)")
    return seg


class _Lattice(NamedTuple):
    """What gan3d needs of a grid geometry, made once per geometry (_lattice)."""

    table: np.ndarray  # (layers, nx, ny) cell id of every lattice position (lattice_cells)
    i: np.ndarray  # lattice indices of every cell
    j: np.ndarray
    mip_mev: tuple[float, float]  # the MIP energy of the ECAL's and of the HCAL's sensors


_LATTICES: dict[str, _Lattice] = {}  # geometry hash -> its _Lattice


def _lattice(geom: Geometry) -> _Lattice:
    """The geometry's _Lattice, made at its first use."""
    if geom.hash not in _LATTICES:
        seg = _require_grid(geom)
        c = geom.cells
        ecal = c["layer"] < LAYERS
        _LATTICES[geom.hash] = _Lattice(
            lattice_cells(geom), *seg.index(c["layer"], c["x"], c["y"]),
            (float(np.median(geom.mip_energy[ecal])), float(np.median(geom.mip_energy[~ecal]))))
    return _LATTICES[geom.hash]


def axis_cells(geom: Geometry, primaries: Primaries) -> tuple[np.ndarray, np.ndarray]:
    """(P, DEPTH) lattice indices (i, j) of the cell each primary's straight line crosses in
    each image layer: the middle of both images (they follow an inclined shower)."""
    seg = _require_grid(geom)
    axis = axis_points(primaries, geom)[:, :DEPTH]
    return seg.index(np.arange(DEPTH), axis[..., 0], axis[..., 1])


def _voxel_table() -> dict[str, np.ndarray]:
    """(VOXELS,) per voxel in image order: its layer, its offset (di, dj) from the axis cell
    (in cells for the fine image and the HCAL, in blocks for the coarse ECAL), whether it is a
    block, and whether it holds energy (not a block under the fine image)."""
    fl, fi, fj = np.indices(FINE_SHAPE).reshape(3, -1)
    cl, ci, cj = np.indices(COARSE_SHAPE).reshape(3, -1)
    h, c = WINDOW // 2, COARSE // 2
    block = np.concatenate([np.zeros(fl.size, bool), cl < LAYERS])
    di, dj = np.concatenate([fi - h, ci - c]), np.concatenate([fj - h, cj - c])
    inner = h // BLOCK  # blocks under the fine window: |b| <= inner
    return {"layer": np.concatenate([fl, cl]), "di": di, "dj": dj, "block": block,
            "used": ~block | (np.abs(di) > inner) | (np.abs(dj) > inner)}


VOXEL = _voxel_table()


def voxel_of_hits(geom: Geometry, batch: ShowerBatch) -> tuple[np.ndarray, ...]:
    """(shower, voxel, energy MeV) of every hit of ``batch``; voxel -1 for hits outside both
    images. An ECAL hit is in the fine image if within WINDOW // 2 cells of the axis cell of
    its layer, else in the coarse block holding it; an HCAL hit of the first HCAL_LAYERS in
    the coarse cell at its offset from the axis cell."""
    event, ids, energy = batch.flat()
    lattice = _lattice(geom)
    ci, cj = lattice.i, lattice.j
    ai, aj = axis_cells(geom, batch.primaries)
    layer = geom.cells["layer"][ids].astype(np.int64)
    at = np.minimum(layer, DEPTH - 1)
    di, dj = ci[ids] - ai[event, at], cj[ids] - aj[event, at]
    h, c = WINDOW // 2, COARSE // 2
    ecal = layer < LAYERS
    fine = ecal & (np.abs(di) <= h) & (np.abs(dj) <= h)
    bi = np.where(ecal, (di + BLOCK // 2) // BLOCK, di)  # a block index in the ECAL
    bj = np.where(ecal, (dj + BLOCK // 2) // BLOCK, dj)
    coarse = ~fine & (layer < DEPTH) & (np.abs(bi) <= c) & (np.abs(bj) <= c)
    voxel = np.full(len(ids), -1, np.int64)
    voxel[fine] = np.ravel_multi_index((layer[fine], di[fine] + h, dj[fine] + h), FINE_SHAPE)
    voxel[coarse] = FINE_VOXELS + np.ravel_multi_index(
        (layer[coarse], bi[coarse] + c, bj[coarse] + c), COARSE_SHAPE)
    return event, voxel, energy


def images(batch: ShowerBatch, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(P, VOXELS) float32 energies (MeV) of both images of every shower, and (P,) the energy
    of each shower's hits outside them."""
    event, voxel, energy = voxel_of_hits(geom, batch)
    n, inside = len(batch), voxel >= 0
    image = np.bincount(event[inside] * VOXELS + voxel[inside], energy[inside], n * VOXELS)
    return (image.reshape(n, VOXELS).astype(np.float32),
            np.bincount(event[~inside], energy[~inside], n))


def voxel_cells(geom: Geometry, primaries: Primaries, rng: np.random.Generator,
                shower: np.ndarray | None = None, voxel: np.ndarray | None = None) -> np.ndarray:
    """The grid cell that each voxel's energy goes to, -1 off the grid (and for the coarse
    voxels under the fine image): of the voxels ``voxel`` of showers ``shower`` (index arrays),
    or (P, VOXELS) of all. A coarse ECAL voxel puts its energy on one cell of its block, drawn
    uniformly (the approximation the coarse image makes: one hit per 5 x 5 cells far from the
    axis, where showers leave single, isolated hits): by a hash of the voxel and of a number
    drawn from ``rng`` per shower, so a voxel's cell does not depend on which other voxels are
    placed (two back-ends whose float rounding differs at the floor place the rest alike)."""
    if shower is None:
        shower, voxel = np.divmod(np.arange(len(primaries) * VOXELS), VOXELS)
        return voxel_cells(geom, primaries, rng, shower, voxel).reshape(-1, VOXELS)
    table = _lattice(geom).table
    ai, aj = axis_cells(geom, primaries)
    layer, block = VOXEL["layer"][voxel], VOXEL["block"][voxel]
    key = rng.integers(0, 2 ** 64, len(primaries), dtype=np.uint64)[shower]
    h = _splitmix64(key ^ voxel.astype(np.uint64))
    spread = np.stack([h % BLOCK, (h >> np.uint64(32)) % BLOCK]).astype(np.int64) - BLOCK // 2
    i = ai[shower, layer] + np.where(block, VOXEL["di"][voxel] * BLOCK + spread[0],
                                     VOXEL["di"][voxel])
    j = aj[shower, layer] + np.where(block, VOXEL["dj"][voxel] * BLOCK + spread[1],
                                     VOXEL["dj"][voxel])
    ok = VOXEL["used"][voxel] & geom.segmentation.on_lattice(layer, i, j)
    cells = table[layer, np.clip(i, 0, table.shape[1] - 1), np.clip(j, 0, table.shape[2] - 1)]
    return np.where(ok, cells, -1)


class AxisShift(nn.Module):
    """Moves images made around the centre of the axis cell to where the primary's straight
    line crosses each layer: the energy of every voxel of a layer goes, by bilinear sharing,
    to the voxels at the line's offset (u, v) in [-0.5, 0.5) voxels from the axis cell's centre
    (in the coarse image's ECAL layers u / BLOCK). Without it the generator has to learn the
    offset, a saw-tooth function of the angles and of the depth (session 17's showers were off
    centre: separation power of the centre 0.34-0.48; with the shift and the physics term,
    which measures the centre about the line, 0.02-0.04).
    Approximation, named: a shower's lateral profile within one voxel is taken as linear
    (bilinear sharing); energy moved beyond an image's edge is dropped."""

    def __init__(self, geom: Geometry):
        super().__init__()
        seg = _require_grid(geom)
        per_layer = {"z": layer_z(geom)[:DEPTH], "size": seg.cell_size[:DEPTH],
                     "nx": seg.nx[:DEPTH], "ny": seg.ny[:DEPTH],
                     "unit": np.where(np.arange(DEPTH) < LAYERS, BLOCK, 1)}
        for k, v in per_layer.items():
            self.register_buffer(k, torch.as_tensor(np.asarray(v, np.float64)).float(),
                                 persistent=False)
        self.register_buffer("mask", torch.from_numpy(VOXEL["used"][FINE_VOXELS:]).float(),
                             persistent=False)

    def offsets(self, position: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """(P, 2, DEPTH) the line's offset from the axis cell's centre, in cells."""
        pos, d = position.double()[:, :, None], direction.double()[:, :, None]
        x, y = line_at(self.z.double()[None], *pos.unbind(1), *d.unbind(1))
        t = torch.stack([x / self.size + self.nx / 2, y / self.size + self.ny / 2], 1)
        return (t - torch.floor(t) - 0.5).float()

    def forward(self, energy: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """Cell energies (P, VOXELS) MeV -> the same, moved to the line at ``line`` (P, 2,
        DEPTH) cells from the axis cells' centres (``offsets``)."""
        u, v = line.unbind(1)
        fine, coarse = split(energy)
        fine = _share(fine, u[:, :LAYERS], v[:, :LAYERS])
        coarse = _share(coarse, u / self.unit, v / self.unit)
        return torch.cat([fine.flatten(1), coarse.flatten(1) * self.mask], 1)


def lines(shift: AxisShift | None, primaries: Primaries) -> torch.Tensor:
    """(P, 2, DEPTH) the primaries' lines from the axis cells' centres (AxisShift.offsets);
    zeros without the shift (the images are about the centres)."""
    if shift is None:
        return torch.zeros(len(primaries), 2, DEPTH)
    return shift.offsets(torch.from_numpy(primaries.position_mm),
                         torch.from_numpy(primaries.direction))


def _share(e: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Images (P, L, H, W) with every layer's content moved by (u, v) (P, L) voxels along H and
    W, |u|, |v| <= 0.5, each voxel's energy shared with its neighbour by linear weights."""
    for axis, s in ((2, u), (3, v)):
        s = s[:, :, None, None]
        n = e.shape[axis]
        up = torch.cat([torch.zeros_like(e.narrow(axis, 0, 1)), e.narrow(axis, 0, n - 1)], axis)
        down = torch.cat([e.narrow(axis, 1, n - 1), torch.zeros_like(e.narrow(axis, 0, 1))], axis)
        e = (1 - s.abs()) * e + s.abs() * torch.where(s >= 0, up, down)
    return e


class Observables(nn.Module):
    """Cell energies (P, VOXELS) MeV -> (P, 34) observables of the validation suite, smooth in
    the energies so that a generator can learn from them: ln(1 + hit count) (the count of
    cells at the validation's HIT_MIP and up, with the gradient of a sigmoid step 20 % wide
    over cells above the floor: straight-through; the sigmoid's own count, before session 20,
    let a generator match Geant4's with many cells just below the threshold, and its showers
    came out with 3-6 % fewer hits); about the primary's
    line (voxel centres: a block's), the lateral width (mm), the fraction within CORE_RADIUS
    and the energy's centre in x and y (mm); the mean and rms layer of the energy and its
    fractions in the layers BANDS: each ECAL layer (with bands of four layers, a generator
    matched the mean depth with a profile that rose and fell with a period of four layers, its
    two stride-2 upsamplings, and the layer of the maximum gave it away), two HCAL bands."""

    BANDS = (*range(LAYERS + 1), 30, DEPTH)  # layer ranges: the longitudinal profile
    SCALARS = 7  # the columns before the profile
    COLUMNS = SCALARS + len(BANDS) - 1

    def __init__(self, geom: Geometry, mip_mev: tuple[float, float]):
        super().__init__()
        cell = _require_grid(geom).cell_size[:DEPTH]
        layer = VOXEL["layer"]
        size = cell[layer] * np.where(VOXEL["block"], BLOCK, 1)
        band = np.searchsorted(self.BANDS, layer, side="right")[:, None] - 1
        for k, v in {"x": VOXEL["di"] * size, "y": VOXEL["dj"] * size, "layer": layer,
                     "cell": cell, "floor": voxel_floors(mip_mev),
                     "band": band == np.arange(len(self.BANDS) - 1)}.items():
            self.register_buffer(k, torch.as_tensor(np.asarray(v, np.float64)).float(),
                                 persistent=False)

    def forward(self, e: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """``line``: (P, 2, DEPTH) where the primary's line crosses each layer, in cells from
        the axis cell's centre (AxisShift.offsets)."""
        total = e.sum(1).clamp(min=1e-12)
        t = self.floor * (HIT_MIP / FLOOR_MIP)
        soft = torch.sigmoid((e / t - 1) / 0.2) * (e >= self.floor)
        hits = ((e >= t).to(e.dtype) + soft - soft.detach()).sum(1)  # straight-through

        def mean(w):  # the energy-weighted mean of w (P, VOXELS) or (VOXELS,) per shower
            return (e * w).sum(1) / total

        layer = self.layer.long()
        dx, dy = (self.x - line[:, 0, layer] * self.cell[layer],
                  self.y - line[:, 1, layer] * self.cell[layer])
        r2 = dx ** 2 + dy ** 2
        depth = mean(self.layer)
        return torch.cat([torch.stack([torch.log1p(hits), (mean(r2) + 1e-6).sqrt(),
                                       mean((r2 < CORE_RADIUS ** 2).float()), mean(dx), mean(dy),
                                       depth, (mean((self.layer - depth[:, None]) ** 2)
                                               + 1e-6).sqrt()], -1),
                          e @ self.band / total[:, None]], -1)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The energy distance 2 E|x - y| - E|x - x'| - E|y - y'| between samples x (n, d) and y
    (m, d) (y: the reference, no gradient; Szekely & Rizzo), the columns standardised by y's
    mean and spread: zero only for equal laws, and, unlike Gaussian kernels, its gradient does
    not vanish when the samples are far apart (which stalled a first version)."""
    y = y.detach()
    mean, std = y.mean(0), y.std(0) + 1e-6
    x, y = (x - mean) / std, (y - mean) / std

    def dist(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(-1).add(1e-8).sqrt().mean()

    return 2 * dist(x, y) - dist(x, x) - dist(y, y)


def physics_distance(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, given: str):
    """The summed distance between the laws of each observable (column) of x (n, k) and y (m,
    k) given conditions c (n, 2) of both (the mini-batch's generated showers were made with its
    Geant4 showers' conditions): ``joint``, the energy distance of (c, column); ``residual``,
    of the columns' residuals from a least-squares linear fit of y in c, the same fit for both
    (compares the conditional laws: the spread of an observable at fixed energy is often far
    smaller than over the spectrum, which the joint form weighs); ``correlated``, those plus
    the energy distance of the residuals of the first Observables.SCALARS columns together
    (their correlations)."""
    if given == "joint":
        return sum(energy_distance(torch.cat([c, x[:, k:k + 1]], -1),
                                   torch.cat([c, y[:, k:k + 1]], -1)) for k in range(x.shape[1]))
    a = torch.cat([torch.ones_like(c[:, :1]), c], -1)
    fit = torch.linalg.solve(a.T @ a + 1e-4 * torch.eye(a.shape[1]), a.T @ y.detach())
    rx, ry = x - a @ fit, y - a @ fit
    each = sum(energy_distance(r[:, None], q[:, None]) for r, q in zip(rx.T, ry.T, strict=True))
    if given == "correlated":
        k = Observables.SCALARS
        return each + energy_distance(rx[:, :k], ry[:, :k])
    return each


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Well-mixed 64-bit integers of uint64 keys (splitmix64's finaliser; wrapping
    arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def per_image(v, x):
    """One value per image ``v`` (P,) shaped to broadcast against images ``x`` (P, ...);
    numpy or torch."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


class Values:
    """Cell energies (MeV) <-> the values of the images that the two networks see, and the
    image quantities the model needs in those values. Two kinds:

    - ``sqrt``: ``SCALE * (e / E_p) ** power`` (``power`` 0.5: the square root), as the
      original (a power of 0.85 there in later versions): images in units of the primary's
      energy; with the square root a cell at the readout threshold of a 500 GeV shower is
      ~1/1,600 of its core cell, too small for either network to see.
    - ``log``: ``ln(1 + e / e0)`` with ``e0`` the floor (FLOOR_MIP, MeV): the floor is at
      ln 2 at every energy, the readout threshold at ln 6 and a 100 GeV core cell at ~15, so
      the cells that make the shower's hit count and width weigh in the adversarial game.
    """

    def __init__(self, kind: str, floor_mev, power: float = 0.5, unit=None):
        """``floor_mev``: the smallest cell energy held, one value or one per voxel (VOXELS,);
        ``power``: of the ``sqrt`` kind; ``unit`` (VOXELS,) or None: of the ``sqrt`` kind, each
        voxel's energy in units of unit * E_p (``voxel_scale``: far from the core, where
        Geant4's cells are ~1/1,000 of the core's in square-root values, the values are lifted
        so that both networks see them)."""
        self.kind, self.power = kind, power
        self.e0 = torch.as_tensor(floor_mev, dtype=torch.float64)
        self.unit = None if unit is None else torch.as_tensor(unit, dtype=torch.float32)

    def encode(self, e: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Cell energies (P, ...) MeV of primaries of ``energy`` (P,) MeV -> values."""
        if self.kind == "log":
            return torch.log(1 + e / self.e0.to(e.dtype))
        e = e / per_image(energy, e)
        if self.unit is not None:
            e = e / self.unit.to(e.dtype)
        return SCALE * (torch.sqrt(e) if self.power == 0.5 else e ** self.power)

    def decode(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Values -> cell energies (MeV)."""
        if self.kind == "log":
            return self.e0.to(x.dtype) * (torch.exp(x.clamp(max=LOG_MAX)) - 1)
        x = x / SCALE  # square root and product, not powers: generation 12 % faster (ONNX)
        e = per_image(energy, x) * (x * x if self.power == 0.5 else x ** (1 / self.power))
        return e if self.unit is None else e * self.unit.to(e.dtype)

    def response(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """E_dep / E_p (P,) of images (P, ...)."""
        return self.decode(x, energy).flatten(1).sum(1) / energy

    def rescale(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Images whose every cell energy is multiplied by ``factor`` (P,) (the shape kept), or
        per cell (P, VOXELS). A factor of 0 (an HCAL brought to a real shower's empty one) is
        taken as 1e-12, so that the root's gradient there is zero, not infinite."""
        if factor.ndim == 1:
            factor = per_image(factor, x)
        if self.kind == "log":
            return torch.log(1 + factor * (torch.exp(x.clamp(max=LOG_MAX)) - 1))
        return x * factor.clamp(min=1e-12) ** self.power

    def with_response(self, x: torch.Tensor, energy: torch.Tensor, r: torch.Tensor):
        """Images (P, ...) rescaled so that their response E_dep / E_p is ``r`` (P,)."""
        return self.rescale(x, r / self.response(x, energy).clamp(min=1e-12))

    def moved(self, x: torch.Tensor, energy: torch.Tensor, shift: AxisShift,
              line: torch.Tensor) -> torch.Tensor:
        """Images moved to the primaries' lines (AxisShift; ``line``: its offsets), in cell
        energies: values (P, VOXELS) -> values. Energies are kept above 1e-30 MeV before
        encoding, so the root's gradient at empty cells is zero, not infinite."""
        e = shift(self.decode(x, energy), line)
        return self.encode(e.clamp(min=1e-30), energy)

    def floor(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """The value of each cell of images ``x`` at the floor."""
        return self.encode(torch.broadcast_to(self.e0.to(x.dtype), x.shape), energy).to(x.dtype)


HCAL_VOXELS = torch.from_numpy(VOXEL["layer"] >= LAYERS)  # (VOXELS,) the HCAL layers' voxels
DEPTH_OF_VOXEL = torch.from_numpy(VOXEL["layer"] / LAYERS).float()  # (VOXELS,) layer / LAYERS


def leakage(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell energies (P, VOXELS) -> (P,) the HCAL's fraction of the energy and the ECAL's
    energy-weighted mean layer over LAYERS (the shower's depth, 0-1)."""
    ecal = torch.where(HCAL_VOXELS, 0.0, e)
    total, in_ecal = e.sum(1).clamp(min=1e-12), ecal.sum(1).clamp(min=1e-12)
    return 1 - in_ecal / total, (ecal * DEPTH_OF_VOXEL.to(e.dtype)).sum(1) / in_ecal


def leakage_factor(now: torch.Tensor, f: torch.Tensor, most: float = 20.0) -> torch.Tensor:
    """(P, VOXELS) factors that bring the HCAL's fraction of cell energies from ``now`` (P,;
    leakage) to ``f`` (P,), the total kept (the HCAL's factor at most ``most``: a nearly empty
    HCAL is not blown up)."""
    hcal = (f / now.clamp(min=1e-6)).clamp(max=most)
    ecal = (1 - now * hcal) / (1 - now).clamp(min=1e-6)  # the rest of the energy in the ECAL
    return torch.where(HCAL_VOXELS, hcal[:, None], ecal[:, None])


class SummaryLaw(nn.Module):
    """Observables of a shower as conditions (``summaries``): each column of ``observables``
    (Observables: the depth, i.e. the energy-weighted mean layer, ln(1 + hit count), the width,
    the core fraction) standardised given the conditions, d = (o - m) / s, with m least
    squares in (1, x, x², theta, theta²) and s² in (1, x) (x the standardised ln E), fitted on
    the training images (``fit``). Geant4's own d in training; in generation d drawn from the
    training sample's law (``draw``): its quantiles per column, joined by the correlations of
    their normal scores (a Gaussian copula). Why: Geant4's showers that develop late are wider,
    have fewer hits and a smaller core (correlations of the residuals at fixed energy, 2,000
    held-out showers: hits -0.62, width 0.59, core fraction -0.54); a generator whose depth came
    from its noise had none of it (-0.11, 0.11, -0.17) and half the depth's spread. Given d,
    the discriminator and the physics term see those relations.
    Approximations, named: the law of d does not depend on the conditions beyond each column's
    mean and spread (its shapes and correlations pooled over the spectrum and the angles); it
    is interpolated linearly between percentiles (the outer percents out to the sample's
    extremes)."""

    QUANTILES = 101
    COLUMNS: ClassVar[dict[str, int]] = {"hits": 0, "width": 1, "core": 2, "depth": 5}

    def __init__(self, law: dict):
        super().__init__()
        self.columns = [self.COLUMNS[k] for k in law["names"]]
        for k in ("mean", "var", "quantiles", "chol"):
            self.register_buffer(k, torch.tensor(law[k], dtype=torch.float32), persistent=False)

    @staticmethod
    def bases(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The regressors of the mean and of the variance, from conditions (P, >= 2)."""
        x, theta = cond[:, 0], cond[:, 1]
        one = torch.ones_like(x)
        return torch.stack([one, x, x * x, theta, theta * theta], -1), torch.stack([one, x], -1)

    @classmethod
    def fit(cls, names: list[str], observables: torch.Tensor, cond: torch.Tensor) -> dict:
        """The law's numbers (norms) from the training images' observables (P, COLUMNS) and
        conditions (P, >= 2)."""
        o = observables[:, [cls.COLUMNS[k] for k in names]].double()
        a, b = cls.bases(cond.double())
        mean = torch.linalg.lstsq(a, o).solution
        r = o - a @ mean
        var = torch.linalg.lstsq(b, r * r).solution
        d = r / (b @ var).clamp(min=1e-6).sqrt()
        q = torch.quantile(d, torch.linspace(0, 1, cls.QUANTILES, dtype=torch.float64), dim=0)
        rank = d.argsort(0).argsort(0).double()
        scores = torch.special.ndtri((rank + 1) / (len(d) + 1))
        chol = torch.linalg.cholesky(torch.corrcoef(scores.T).reshape(len(names), len(names)))
        return {"names": list(names), "mean": mean.T.tolist(), "var": var.T.tolist(),
                "quantiles": q.T.tolist(), "chol": chol.tolist()}

    def standardise(self, observables: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """d (P, k) of observables (P, COLUMNS) given the conditions (P, >= 2)."""
        a, b = self.bases(cond)
        o = observables[:, self.columns]
        return (o - a @ self.mean.T) / (b @ self.var.T).clamp(min=1e-6).sqrt()

    def draw(self, z: torch.Tensor) -> torch.Tensor:
        """d (P, k) from standard normal noise z (P, k): correlated by the copula, each column
        its quantiles at Phi of its score, interpolated."""
        u = 0.5 * (1 + torch.erf(z @ self.chol.T / float(np.sqrt(2.0))))
        at = u.clamp(0, 1) * (self.QUANTILES - 1)
        i = at.floor().clamp(max=self.QUANTILES - 2)
        w = at - i
        flat = self.quantiles.flatten()
        i = i.long() + torch.arange(len(self.columns)) * self.QUANTILES  # in the flat table
        return flat[i] * (1 - w) + flat[i + 1] * w

    def noise(self, d: torch.Tensor) -> torch.Tensor:
        """The noise z (P, k) that ``draw`` turns into d (P, k), d inside the quantiles' range:
        to generate showers with given summaries (e.g. Geant4's, to see how closely the
        generator follows them)."""
        grid = np.linspace(0.0, 1.0, self.QUANTILES)
        q = self.quantiles.double().numpy()
        u = np.stack([np.interp(d[:, j].double().numpy(), q[j], grid)
                      for j in range(len(self.columns))], -1)
        scores = torch.special.ndtri(torch.from_numpy(u).clamp(1e-7, 1 - 1e-7))
        return torch.linalg.solve_triangular(self.chol.double(), scores.T, upper=False).T.float()


def soft_cut(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``x`` with values below ``threshold`` smoothly cut to zero (a sigmoid step 10 % wide)."""
    return x * torch.sigmoid((x - threshold) / (0.05 * threshold))


class Generator(nn.Module):
    """(latent noise, conditions) -> both images, flattened (P, VOXELS). The fine image: a
    dense layer to 7^3 x 4C, transposed 3-D convolutions 7 -> 13 -> 25; the coarse one: a
    dense layer to 20 x 6 x 6 x 2C, a transposed convolution to 40 x 11 x 11, its voxels under
    the fine image zero. The last transposed convolutions give the images (one channel; kernel
    4, stride 2: every voxel from 2 x 2 x 2 inputs, so no checkerboard): a 3 x 3 x 3
    convolution at full resolution after them, as the first version had (``last``), took 3/4
    of the generator's time. ReLU outputs (empty cells are exact zeros);
    ``start``: the last layers' initial bias (log values: above the floor, ln 2, where the
    soft cut of ``sparse`` passes gradients). ``depth_shift``: both images slide along their
    layers (``slide``) by a depth s = depth_shift tanh(a + b z_0) layers, a and ln b from a
    small network of the conditions (``depth``), z_0 the first noise component (which the
    convolutions see too, so the shape can follow the depth): an explicit knob for the
    shower-to-shower variation of the depth, which transposed convolutions from a dense layer
    of the noise hardly make (without it the centroid's spread above 100 GeV was half Geant4's;
    a first version, s from a network of all the noise started at s = 0 and never spread).
    Approximation, named: the whole shower moves as one (its start fluctuating, its development
    not), linearly interpolated between layers; values slid past the last layer are dropped."""

    def __init__(self, latent: int, conditions: int, channels: int, start: float | None = None,
                 last: str = "transposed", depth_shift: float = 0.0, bias_maps: bool = False,
                 summaries: int = 0):
        super().__init__()
        c = channels
        self.c = c
        self.dense = nn.Linear(latent + conditions, 4 * c * 7 ** 3)
        if last == "convolution":  # the first version's: at full resolution, slow
            tail = [nn.ConvTranspose3d(2 * c, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                    nn.Conv3d(c, 1, 3, padding=1)]
        else:  # kernel 4, stride 2: 8 taps for every voxel (no two-voxel checkerboard; trained
            # images still showed stripes four cells apart, session 20), 26^3 cut to 25^3
            tail = [nn.ConvTranspose3d(2 * c, 1, 4, stride=2, padding=1), Crop(FINE_SHAPE)]
        # both end before their ReLU (forward: after the bias maps, when there are any)
        self.net = nn.Sequential(
            nn.LeakyReLU(0.2), nn.ConvTranspose3d(4 * c, 2 * c, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2), *tail)
        self.coarse_dense = nn.Linear(latent + conditions, 2 * c * DEPTH // 2 * 6 * 6)
        self.coarse = nn.Sequential(  # 20 x 6 x 6 -> 40 x 12 x 12, cut to 40 x 11 x 11
            nn.LeakyReLU(0.2), nn.ConvTranspose3d(2 * c, 1, 4, stride=2, padding=1),
            Crop(COARSE_SHAPE))
        used = VOXEL["used"][FINE_VOXELS:]  # the coarse voxels that hold energy
        self.register_buffer("mask", torch.from_numpy(used).float(), persistent=False)
        self.depth_shift = depth_shift
        if depth_shift:  # at the start: a = 0, s spread by ~0.5 layers
            self.depth = nn.Sequential(nn.Linear(conditions, 32), nn.LeakyReLU(0.2),
                                       nn.Linear(32, 2))
            nn.init.zeros_(self.depth[-1].weight)
            with torch.no_grad():
                self.depth[-1].bias.copy_(torch.tensor([0.0, np.log(0.5 / depth_shift)]))
        self.bias_maps = bias_maps
        if bias_maps:  # per voxel, before the ReLU: a constant and slopes in the standardised
            # ln E (the first condition) and in the ``summaries`` (the last conditions)
            self.slopes = [0, *range(conditions - summaries, conditions)]
            self.bias = nn.Parameter(torch.zeros(1 + len(self.slopes), VOXELS))
        if start is not None:
            for net in (self.net, self.coarse):
                nn.init.constant_([m for m in net if hasattr(m, "bias")][-1].bias, start)

    def start_from(self, maps: torch.Tensor) -> None:
        """Bias maps' first rows set to ``maps`` (2, VOXELS: constant, slope in ln E), the
        convolutions' last layers scaled down tenfold: images start near the maps."""
        with torch.no_grad():
            self.bias[:len(maps)].copy_(maps)
            for net in (self.net, self.coarse):
                for p in [m for m in net if hasattr(m, "weight")][-1].parameters():
                    p.mul_(0.1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        zc = torch.cat([z, cond], -1)
        fine = self.net(self.dense(zc).reshape(-1, 4 * self.c, 7, 7, 7))
        coarse = self.coarse(self.coarse_dense(zc).reshape(-1, 2 * self.c, DEPTH // 2, 6, 6))
        if not self.bias_maps:
            fine, coarse = torch.relu(fine), torch.relu(coarse)
        if self.depth_shift:
            a, log_b = self.depth(cond).unbind(-1)
            s = self.depth_shift * torch.tanh(a + log_b.exp() * z[:, 0])
            fine, coarse = slide(fine[:, 0], s), slide(coarse[:, 0], s)
        if not self.bias_maps:
            return torch.cat([fine.flatten(1), coarse.flatten(1) * self.mask], 1)
        out = torch.relu(torch.cat([fine.flatten(1), coarse.flatten(1)], 1)
                         + self.bias[0] + cond[:, self.slopes] @ self.bias[1:])
        return torch.cat([out[:, :FINE_VOXELS], out[:, FINE_VOXELS:] * self.mask], 1)


def slide(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Images (P, L, H, W) moved by s (P,) layers deeper (s < 0: shallower), layer l taking
    from the layers l - s by linear interpolation (hat weights: smooth in s, one batched
    matrix product); the layers before a later start take the first layer's content (the
    primary's track: empty first layers gave the start layer away, separation power 0.10)."""
    n = x.shape[1]
    layer = torch.arange(n, dtype=x.dtype)
    source = (layer[None, :, None] - s[:, None, None]).clamp(min=0)
    w = torch.relu(1 - (source - layer[None, None, :]).abs())
    return torch.bmm(w, x.flatten(2)).reshape(x.shape)


class Crop(nn.Module):
    """The first ``shape`` voxels of each axis of (P, 1, *larger)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = self.shape
        return x[:, :, :d, :h, :w]


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened images (P, VOXELS) -> fine (P, *FINE_SHAPE) and coarse (P, *COARSE_SHAPE)."""
    return (x[:, :FINE_VOXELS].reshape(-1, *FINE_SHAPE),
            x[:, FINE_VOXELS:].reshape(-1, *COARSE_SHAPE))


class Discriminator(nn.Module):
    """images -> (real/fake logit, ln E_p, ln E_dep (MeV), incidence angle theta (rad)): strided
    3-D convolutions of the fine image 25 -> 13 -> 7 -> 4 and of the coarse one 40 x 11 x 11 ->
    20 x 6 x 6 -> 10 x 3 x 3, then two dense layers; the images' summed energy also enters the
    dense part (as the original's "ECAL sum" did), as ln(E_dep / E_p): the exact response,
    given with them. ``minibatch_std``: the dense part also sees the spread of the
    convolutional features over the mini-batch (Karras et al. 2018), so that a generator whose
    showers vary too much, or too little, from one to the next is told apart. ``extra``: the
    number of further per-shower features its dense part is given (``d_observables``)."""

    def __init__(self, channels: int, minibatch_std: bool = False, extra: int = 0):
        super().__init__()
        c = channels
        self.minibatch_std = minibatch_std
        self.conv = nn.Sequential(
            nn.Conv3d(1, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        self.coarse = nn.Sequential(
            nn.Conv3d(1, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        features = 4 * c * 4 ** 3 + 2 * c * (DEPTH // 4) * 3 * 3
        self.head = nn.Sequential(nn.Linear(features + 1 + minibatch_std + extra, 64),
                                  nn.LeakyReLU(0.2), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor, log_response: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        fine, coarse = split(x)
        h = torch.cat([self.conv(fine[:, None]), self.coarse(coarse[:, None])], -1)
        extra = [log_response[:, None]] + ([] if features is None else [features])
        if self.minibatch_std:
            extra.append(h.std(0, unbiased=False).mean().expand(len(h), 1))
        return self.head(torch.cat([h, *extra], -1))


class ResponseLaw(nn.Module):
    """conditions -> (mean, log sigma) of a Gaussian law of one quantity, fitted by likelihood:
    ln(E_dep / E_p) (``response_law``), logit of the HCAL's fraction (``leakage_law``); the
    network gives offsets from the training sample's mean and spread (``mean``, ``std``)."""

    def __init__(self, conditions: int, mean: float, std: float, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(conditions, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.mean, self.std = float(mean), float(std)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_sigma = self.net(cond).unbind(-1)
        return (self.mean + mean * self.std,
                (float(np.log(self.std)) + log_sigma).clamp(-8.0, 2.0))

    def nll(self, cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The summed negative log-likelihood of values ``x`` (P,) (up to a constant)."""
        mean, log_sigma = self(cond)
        return (log_sigma + 0.5 * ((x - mean) / log_sigma.exp()) ** 2).sum()

    def draw(self, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Values (P,) drawn with standard normal noise ``z`` (P,)."""
        mean, log_sigma = self(cond)
        return mean + log_sigma.exp() * z


def _theta(direction: np.ndarray) -> np.ndarray:
    """Polar angle (rad) of unit directions from the z axis (the grid's normal)."""
    return np.arccos(np.clip(direction[:, 2], -1.0, 1.0))


def conditions(energy, direction, particle, log_e: tuple[float, float], n_particles: int):
    """(n, 4 + particles) float32 tensor: standardised ln E, theta (rad), cos phi, sin phi and
    the particle one-hot, from tensors (energy MeV, unit direction, particle index): the one
    formula of training and of the generation program."""
    theta = torch.acos(direction[:, 2].clamp(-1.0, 1.0))
    phi = torch.atan2(direction[:, 1], direction[:, 0])
    return torch.cat([torch.stack([(torch.log(energy) - log_e[0]) / log_e[1], theta,
                                   torch.cos(phi), torch.sin(phi)], -1).float(),
                      nn.functional.one_hot(particle, n_particles).float()], -1)


class ImageData:
    """A split as images: voxel energies (N, VOXELS) float32 MeV (images), the primaries, and
    the regression targets (ln E_p (MeV), ln E_dep / E_p (E_dep: the images' energy), theta)."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        p = batch.primaries
        e, self.outside_mev = images(batch, geom)
        self.primaries = p
        self.energy_mev = e
        self.targets = np.stack([np.log(p.energy_mev),
                                 np.log(e.sum(1) / p.energy_mev + 1e-9),
                                 _theta(p.direction)], -1).astype(np.float32)

    def __len__(self) -> int:
        return len(self.energy_mev)


def voxel_floors(mip_mev: tuple[float, float]) -> np.ndarray:
    """(VOXELS,) the smallest energy (MeV) each voxel holds: FLOOR_MIP of the ECAL's or the
    HCAL's sensors' MIP (``mip_mev``)."""
    return FLOOR_MIP * np.where(VOXEL["layer"] < LAYERS, *mip_mev)


def training_observables(energy_mev: np.ndarray, primaries: Primaries, geom: Geometry,
                         cfg: Gan3DConfig, mip_mev: tuple[float, float]) -> torch.Tensor:
    """(N, Observables.COLUMNS) the observables of images (N, VOXELS) MeV of the primaries'
    showers (Geant4's or generated) as training sees them (cut at the floor with ``sparse``)."""
    obs = Observables(geom, mip_mev)
    line = lines(AxisShift(geom) if cfg.shift else None, primaries)
    floor = torch.from_numpy(voxel_floors(mip_mev)).float()
    out = []
    with torch.no_grad():
        for i in range(0, len(energy_mev), 512):
            e = torch.as_tensor(energy_mev[i:i + 512]).float()
            out.append(obs(e * (e >= floor) if cfg.sparse else e, line[i:i + 512]))
    return torch.cat(out)


class Gan3D(NetworkGenerator):
    """The generator, the discriminator and the condition normalisation; see the module
    docstring."""

    name = "gan3d"
    training = "steps"
    config_type = Gan3DConfig
    questions: ClassVar[dict[str, str]] = {
        "data_structure": f"the ECAL as a {LAYERS} x {WINDOW} x {WINDOW} image of cells centred "
                          f"on the primary's line in every layer, and a coarse {DEPTH} x "
                          f"{COARSE} x {COARSE} image of {BLOCK} x {BLOCK}-cell ECAL blocks "
                          "around it and HCAL cells; values 10 sqrt(e / E) or ln(1 + e / "
                          "floor) (option values)",
        "condition_encoding": "ln E standardised, theta (rad), cos and sin phi, particle one-hot; "
                              "with option summaries the shower's standardised depth, width, "
                              "core fraction or hit count, drawn from their joint law",
        "tuning": "adversarial (non-saturating BCE, real labels 0.9, R1 penalty, Adam beta1 "
                  "0.5) plus auxiliary regressions of E, the response E_dep / E and theta by "
                  "the discriminator; generator weights chosen by the validation FPD",
        "model_format": "PyTorch file (torch.load weights_only: tensors and plain data)"}
    loss_weights: ClassVar[dict[str, float]] = {"d_adv": 1.0, "d_aux": 1.0, "d_r1": 1.0,
                                                "g_adv": 1.0, "g_aux": 1.0, "g_response": 1.0,
                                                "g_physics": 1.0, "g_summaries": 1.0,
                                                "response_nll": 1.0, "leakage_nll": 1.0}
    stages: ClassVar[dict[str, tuple[str, ...]]] = {"generator": ("g_adv", "g_aux",
                                                                  "g_response", "g_physics",
                                                                  "g_summaries",
                                                                  "response_nll",
                                                                  "leakage_nll"),
                                                    "discriminator": ("d_adv", "d_aux", "d_r1")}
    adam_betas: ClassVar[tuple[float, float]] = (0.5, 0.999)

    def selection_loss(self, stage: str, record: dict) -> float:
        """The generator's best weights are those whose validation showers are closest to
        Geant4's: by the classifier test's AUC where validation runs it (``val_classifier``),
        else by the FPD of the high-level observables; adversarial losses do not fall as the
        generator improves."""
        if stage == "generator":
            return record.get("auc", record["fpd"])
        return super().selection_loss(stage, record)

    def __init__(self, geom: Geometry, particles: list[str], cfg: Gan3DConfig, norms: dict):
        _require_grid(geom)
        super().__init__(geom, particles, cfg, norms)
        self.loss_weights = {**self.loss_weights, "d_aux": cfg.aux_weight,
                             "g_aux": cfg.aux_weight, "g_response": cfg.response_weight,
                             "g_physics": cfg.physics_weight,
                             "g_summaries": cfg.summary_weight}
        k = len(cfg.summaries)
        given = 4 + len(particles) + k  # the conditions, then the summaries d
        self.generator = Generator(cfg.latent, given, cfg.channels,
                                   start=1.0 if cfg.values == "log" else None, last=cfg.last,
                                   depth_shift=cfg.depth_shift, bias_maps=cfg.bias_maps,
                                   summaries=k)
        self.discriminator = Discriminator(cfg.channels, cfg.minibatch_std,
                                           (Observables.COLUMNS + 2) * cfg.d_observables + k)
        self.summary_law = SummaryLaw(norms["summaries"]) if k else None
        self.values = Values(cfg.values, voxel_floors(norms["mip_mev"]), cfg.power,
                             norms.get("voxel_unit"))
        self.shift = AxisShift(geom) if cfg.shift else None
        self.observables = (Observables(geom, norms["mip_mev"])
                            if cfg.physics_weight or cfg.d_observables or k else None)
        if cfg.response_law:  # part of the generator's stage: selected with its weights
            self.generator.law = ResponseLaw(given, norms["aux_mean"][1], norms["response_std"])
        if cfg.leakage_law:  # given the conditions and the ECAL depth
            self.generator.leakage = ResponseLaw(given + 1, *norms["leakage"])

    # ---- conditions --------------------------------------------------------------------------
    def conditions(self, primaries: Primaries) -> torch.Tensor:
        """(n, 4 + particles) generator conditions of primaries (see ``conditions``)."""
        return conditions(torch.from_numpy(primaries.energy_mev),
                          torch.from_numpy(primaries.direction),
                          torch.from_numpy(particle_index(primaries.pdg, self.particles)),
                          (self.norms["log_e_mean"], self.norms["log_e_std"]),
                          len(self.particles))

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def training_data(cls, batch: ShowerBatch, geom: Geometry) -> ImageData:
        return ImageData(batch, geom)

    @classmethod
    def build(cls, data: ImageData, geom: Geometry, cfg: Gan3DConfig | None, seed: int) -> Gan3D:
        log_e = np.log(data.primaries.energy_mev)
        norms = {"log_e_mean": float(log_e.mean()), "log_e_std": float(log_e.std() + 1e-6),
                 "aux_mean": data.targets.mean(0).tolist(),
                 "response_std": float(data.targets[:, 1].std() + 1e-6),  # of ln(E_dep / E_p)
                 "mip_mev": list(_lattice(geom).mip_mev),  # ECAL, HCAL sensors
                 # eta is no condition (theta is): no eta range, which near the axis would
                 # refuse directions only a little closer to it than the training sample's
                 "ranges": {k: v for k, v in TrainingRanges.of(data.primaries).to_dict().items()
                            if k != "eta"}}
        cfg = cfg or Gan3DConfig()
        if cfg.leakage_law:  # logit of the HCAL's fraction: mean, spread
            f = torch.logit(leakage(torch.from_numpy(data.energy_mev))[0], eps=1e-6)
            norms["leakage"] = [float(f.mean()), float(f.std() + 1e-6)]
        if cfg.summaries or cfg.d_observables:  # of the images as training sees them
            obs = training_observables(data.energy_mev, data.primaries, geom, cfg,
                                       norms["mip_mev"])
        if cfg.summaries:
            x = (log_e - norms["log_e_mean"]) / norms["log_e_std"]
            norms["summaries"] = SummaryLaw.fit(cfg.summaries, obs, torch.from_numpy(
                np.stack([x, _theta(data.primaries.direction)], -1)))
        if cfg.voxel_scale:  # Values' unit: each voxel's mean share, relative to the core's
            share = np.zeros(VOXELS)
            for i in range(0, len(data), 512):
                share += (data.energy_mev[i:i + 512]
                          / data.primaries.energy_mev[i:i + 512, None]).sum(0)
            share = np.maximum(share / share.max(), 1e-9)
            norms["voxel_unit"] = (share ** cfg.voxel_scale).tolist()
        if cfg.d_observables:  # the discriminator's observables in units of their spread
            norms["observables"] = [obs.mean(0).tolist(), (obs.std(0) + 1e-6).tolist()]
        model = cls(geom, particle_names(data.primaries.pdg), cfg, norms)
        if cfg.bias_maps and cfg.bias_init == "mean":
            model.generator.start_from(model.mean_values(data))
        return model

    def mean_values(self, data: ImageData, chunk: int = 512) -> torch.Tensor:
        """(2, VOXELS) maps (constant, slope in the standardised ln E x) whose values hold the
        training images' mean energy per voxel (cut at the floor with ``sparse``): each voxel's
        share of E_p fitted linearly in x, then the values of that mean shower, fitted linearly
        in x (least squares both; the mean of the values themselves would be too compact: the
        square root of a cell lit now and then averages to far less than that of its mean)."""
        x = self.conditions(data.primaries)[:, 0].double()
        a = torch.stack([torch.ones_like(x), x], -1)
        gram = a.T @ a
        energy = torch.from_numpy(data.primaries.energy_mev)

        def fit(per_chunk):  # least squares of per_chunk(i) (chunk, VOXELS) against a
            rhs = sum(a[i:i + chunk].T @ per_chunk(i) for i in range(0, len(data), chunk))
            return torch.linalg.solve(gram, rhs)

        def share(i):
            e = torch.from_numpy(data.energy_mev[i:i + chunk]).double()
            if self.cfg.sparse:
                e = e * (e >= self.values.e0)
            return e / energy[i:i + chunk, None]

        mean_share = fit(share)
        return fit(lambda i: self.values.encode(
            (a[i:i + chunk] @ mean_share).clamp(min=0) * energy[i:i + chunk, None],
            energy[i:i + chunk])).float()

    def _seen(self, obs: torch.Tensor | None, cond: torch.Tensor,
              d: torch.Tensor | None) -> torch.Tensor | None:
        """The discriminator's further features: with ``d_observables`` the observables in
        units of the training sample's spread and (ln E, theta), with ``summaries`` their d
        (P, k); None without either."""
        seen = [] if d is None else [d]
        if self.cfg.d_observables:
            mean, std = (torch.tensor(v) for v in self.norms["observables"])
            seen = [(obs - mean) / std, cond[:, :2], *seen]
        return torch.cat(seen, -1) if seen else None

    def _aux(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per shower: |relative error| of E_p and of the response E_dep / E_p, |error| of
        theta (rad); the heads regress offsets from the training sample's means."""
        out = out[:, 1:] + torch.tensor(self.norms.get("aux_mean", [0.0, 0.0, 0.0]))
        rel = (torch.exp(out[:, :2] - target[:, :2]) - 1).abs().sum(-1)
        return rel + (out[:, 2] - target[:, 2]).abs()

    def forward(self, data: ImageData, rng: np.random.Generator, scale: int = 1,
                shard: tuple[int, int] = (0, 1)) -> dict[str, tuple[torch.Tensor, float]]:
        """Loss terms as (sum, count) over this rank's share of the step's showers: each
        player's adversarial BCE and auxiliary regression error, and the discriminator's
        gradient penalty (training only; see the module docstring)."""
        rank, world = shard
        index = rng.choice(len(data), min(self.cfg.batch * scale, len(data)),
                           replace=False)[rank::world]
        values, primaries = self.values, data.primaries.subset(index)
        energy = torch.from_numpy(primaries.energy_mev).float()
        real = values.encode(torch.from_numpy(data.energy_mev[index]), energy)
        target = torch.from_numpy(data.targets[index])
        if self.cfg.sparse:  # the cells that are placed; the response is theirs
            floor = values.floor(real, energy)
            real = real * (real >= floor)
            target = torch.cat([target[:, :1],
                                torch.log(values.response(real, energy) + 1e-9)[:, None],
                                target[:, 2:]], -1)
        penalise = self.cfg.r1 > 0 and torch.is_grad_enabled()
        real.requires_grad_(penalise)
        cond = self.conditions(primaries)
        line = lines(self.shift, primaries)
        seen_real = real if self.cfg.d_observables else real.detach()  # in R1's graph or not
        obs_real = (self.observables(values.decode(seen_real, energy), line)
                    if self.observables is not None else None)
        d = None
        if self.summary_law is not None:  # the real shower's summaries, given to both players
            d = self.summary_law.standardise(obs_real.detach(), cond)
            cond = torch.cat([cond, d], -1)
        z = torch.from_numpy(rng.standard_normal((len(index), self.cfg.latent)).astype(np.float32))
        fake = self.generator(z, cond)
        if self.shift is not None:
            fake = values.moved(fake, energy, self.shift, line)
        if self.cfg.sparse:
            fake = soft_cut(fake, floor)
        law, leak = torch.zeros(()), torch.zeros(())
        if self.cfg.leakage_law:  # the HCAL's fraction of the real shower; its law by NLL
            f, depth = leakage(values.decode(real.detach(), energy))
            now = leakage(values.decode(fake, energy))[0]
            fake = values.rescale(fake, leakage_factor(now, f))
            leak = self.generator.leakage.nll(torch.cat([cond, depth[:, None]], -1),
                                              torch.logit(f, eps=1e-6))
        if self.cfg.response_law:  # the shape at the real shower's response; the law by NLL
            fake = values.with_response(fake, energy, torch.exp(target[:, 1]))
            law = self.generator.law.nll(cond, target[:, 1])
        bce = nn.functional.binary_cross_entropy_with_logits
        log_r = torch.log(values.response(fake, energy) + 1e-6)
        obs = [None if obs_real is None else self.observables(values.decode(fake, energy), line),
               obs_real]
        seen = [self._seen(o, cond, d) for o in obs]
        d_real = self.discriminator(real, torch.log(values.response(real, energy) + 1e-6),
                                    seen[1])
        d_fake = self.discriminator(fake.detach(), log_r.detach(),
                                    None if seen[0] is None else seen[0].detach())
        d_adv = (bce(d_real[:, 0], torch.full_like(d_real[:, 0], 0.9), reduction="sum")
                 + bce(d_fake[:, 0], torch.zeros_like(d_fake[:, 0]), reduction="sum"))
        r1 = torch.zeros(())
        if penalise:  # R1 (Mescheder et al. 2018): flat discriminator around the real data
            grad, = torch.autograd.grad(d_real[:, 0].sum(), real, create_graph=True)
            r1 = 0.5 * self.cfg.r1 * grad.pow(2).sum()
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        g_out = functional_call(self.discriminator, frozen, (fake, log_r, seen[0]))
        n = float(len(index))
        physics = torch.zeros(())
        if self.cfg.physics_weight:  # each observable's law given (ln E, theta[, d])
            given = [cond[:, :2]] + ([] if d is None else [d])
            if self.cfg.physics_direction:  # (sin theta cos phi, sin theta sin phi)
                given.append(torch.sin(cond[:, 1:2]) * cond[:, 2:4])
            given = torch.cat(given, -1)
            physics = n * physics_distance(obs[0], obs[1].detach(), given,
                                           self.cfg.physics_given)
        follow = torch.zeros(())
        if d is not None and self.cfg.summary_weight:  # the summaries it was given, per shower
            follow = nn.functional.huber_loss(self.summary_law.standardise(obs[0], cond), d,
                                              reduction="sum")
        return {"d_adv": (d_adv, n), "d_aux": (self._aux(d_real, target).sum(), n), "d_r1": (r1, n),
                "g_adv": (bce(g_out[:, 0], torch.ones_like(g_out[:, 0]), reduction="sum"), n),
                "g_aux": (self._aux(g_out, target).sum(), n),
                "g_response": ((torch.exp(log_r - target[:, 1]) - 1).abs().sum(), n),
                "g_physics": (physics, n), "g_summaries": (follow, n),
                "response_nll": (law, n), "leakage_nll": (leak, n)}

    # ---- generation --------------------------------------------------------------------------
    def export_module(self) -> nn.Module:
        if "_program" not in self.__dict__:  # plain attribute: not a registered submodule
            self.__dict__["_program"] = Gan3DProgram(self).eval()
        return self.__dict__["_program"]

    def export_side(self) -> dict:
        return {"images": IMAGES}

    @classmethod
    def host(cls, side: dict, geom: Geometry):
        """Images onto the grid's cells (place_image)."""
        if side.get("images") != IMAGES:
            raise FastShowerError(f"this gan3d was exported with images {side}; this version "
                                  f"places {IMAGES}")
        return lambda out, primaries, rng: place_image(out["image"], primaries, geom, rng)


class Gan3DProgram(nn.Module):
    """(energy MeV, position mm, direction, particle index, latent noise) -> cell energies
    (P, VOXELS) MeV of both images; the host puts them on cells."""

    output_names = ("image",)
    chunk = 128  # showers per call (80 kB of image each; at the default 16: 4 % slower)

    def __init__(self, model: Gan3D):
        super().__init__()
        self.generator = model.generator
        self.law = model.generator.law if model.cfg.response_law else None
        self.leakage = model.generator.leakage if model.cfg.leakage_law else None
        self.summary_law = model.summary_law
        self.values, self.sparse, self.shift = model.values, model.cfg.sparse, model.shift
        self.log_e = (model.norms["log_e_mean"], model.norms["log_e_std"])
        self.n_particles = len(model.particles)
        self.noise = {"z": ("normal", (model.cfg.latent,))}
        if self.law is not None:
            self.noise["z_response"] = ("normal", (1,))
        if self.leakage is not None:
            self.noise["z_leakage"] = ("normal", (1,))
        if self.summary_law is not None:
            self.noise["z_summaries"] = ("normal", (len(self.summary_law.columns),))

    def forward(self, energy, position, direction, particle, z, z_response=None,
                z_leakage=None, z_summaries=None):
        cond = conditions(energy, direction, particle, self.log_e, self.n_particles)
        if self.summary_law is not None:  # the shower's summaries, drawn from their law
            cond = torch.cat([cond, self.summary_law.draw(z_summaries)], -1)
        image = self.generator(z, cond)
        if self.shift is not None:
            image = self.values.moved(image, energy, self.shift,
                                      self.shift.offsets(position, direction))
        if self.sparse:
            image = soft_cut(image, self.values.floor(image, energy))
        e = self.values.decode(image, energy)
        if self.leakage is not None:
            now, depth = leakage(e)
            f = torch.sigmoid(self.leakage.draw(torch.cat([cond, depth[:, None].to(cond.dtype)],
                                                          -1), z_leakage[:, 0]))
            e = e * leakage_factor(now, f)
        if self.law is not None:  # Values.with_response, on the energies: one pass less
            r = torch.exp(self.law.draw(cond, z_response[:, 0]))
            floor = self.values.e0.to(e.dtype)
            for _ in range(2):  # the response of the cells placed (at least the floor)
                e = e * (e >= floor)
                e = e * per_image(r / (e.sum(1) / energy).clamp(min=1e-12), e)
        return (e,)


def place_image(image: np.ndarray, primaries: Primaries, geom: Geometry,
                rng: np.random.Generator) -> ShowerBatch:
    """Showers from images (P, VOXELS) MeV: each voxel of at least FLOOR_MIP onto its grid cell
    (voxel_cells, for those voxels only; voxels off the grid are dropped, as Geant4's energy
    there would be)."""
    shower, voxel = np.nonzero(image >= voxel_floors(_lattice(geom).mip_mev))
    cells = voxel_cells(geom, primaries, rng, shower, voxel)
    ok = cells >= 0
    return to_batch(primaries, geom, shower[ok], cells[ok],
                    image[shower[ok], voxel[ok]].astype(np.float64))
