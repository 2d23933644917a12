"""3DGAN (issue 18): the ECAL of the CLIC-like grid as a 3-D image and a conditional 3-D
convolutional GAN whose discriminator also regresses the physics (primary energy, deposited
energy, incidence angle), after the CERN openlab work "Deep Learning for fast simulation"
(Khattak et al., 2018).

The image: for each of the first ``LAYERS`` layers (the grid's ECAL), the ``WINDOW`` x
``WINDOW`` cells centred on the cell that the primary's straight line crosses in that layer.
The window follows an inclined shower (shower coordinates), so 25 x 25 cells hold it at every
angle of the sample; a window fixed at the impact point would lose the back of a shower
inclined by 30 degrees (its axis moves ~15 cells over the ECAL). Cell values are
``SCALE * (e / E_p) ** POWER`` (the square root compresses the range of cell energies; the
original used a power of 0.85 in later versions) or ``ln(1 + e / threshold)`` (``Values``);
generated cells below the readout threshold (half a MIP) are dropped.

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
the adversarial game is about the shape alone. Stabilisation (without it, the discriminator
won within a few hundred steps and the generator never learnt): real labels smoothed to 0.9,
an R1 gradient penalty on real images (``r1``), Adam's beta1 = 0.5, and the generator's
weights chosen by the FPD of its validation showers, not by its loss.

Approximations, named: energy outside the window (and in the HCAL) is not generated (the
training data record how much); hit times are times of flight; cells of one layer are on the
grid's lattice only (square cells).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from fastshower.errors import FastShowerError
from fastshower.geometry import Geometry
from fastshower.geometry.grid import GridSegmentation, lattice_cells
from fastshower.geometry.showers import axis_points
from fastshower.models.base import NetworkGenerator, TrainingRanges
from fastshower.models.showers import THRESHOLD_MIP, particle_index, particle_names, to_batch
from fastshower.simhits import Primaries, ShowerBatch

LAYERS = 25  # the grid's ECAL
WINDOW = 25  # cells per side of a layer's image (odd: the axis cell in the middle)
SCALE, POWER = 10.0, 0.5  # cell value = SCALE * (e / E_p) ** POWER


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
    # cells below half a MIP cut out of real and generated images (the generator's smoothly),
    # so the discriminator sees, and the response law fills, the cells that become hits
    sparse: bool = False
    values: Literal["sqrt", "log"] = "sqrt"  # the image's cell values (Values)


def _require_grid(geom: Geometry) -> GridSegmentation:
    """The grid segmentation of ``geom``; one clear error for a geometry gan3d cannot use."""
    seg = geom.segmentation
    if not isinstance(seg, GridSegmentation) or len(geom.layers) < LAYERS:
        raise FastShowerError(f"gan3d needs a grid geometry (square cells, at least {LAYERS} "
                              "layers: fastshower geometry build --builder grid)")
    return seg


_ID_TABLES: dict[str, np.ndarray] = {}  # geometry hash -> (LAYERS, nx, ny) cell ids


def _ecal_ids(geom: Geometry) -> np.ndarray:
    """(LAYERS, nx, ny) cell id of lattice position (i, j) of every ECAL layer, -1 where the
    layer has none (lattice_cells), once per geometry."""
    if geom.hash not in _ID_TABLES:
        _require_grid(geom)
        _ID_TABLES[geom.hash] = lattice_cells(geom)[:LAYERS]
    return _ID_TABLES[geom.hash]


def window_cells(geom: Geometry, primaries: Primaries) -> np.ndarray:
    """(P, LAYERS, WINDOW, WINDOW) cell ids of every primary's image window; -1 off the grid.
    Integer arithmetic on the lattice and one gather (no point lookup per window cell)."""
    seg = _require_grid(geom)
    nx, ny = seg.nx[:LAYERS], seg.ny[:LAYERS]
    table = _ecal_ids(geom)
    axis = axis_points(primaries, geom)[:, :LAYERS]
    i, j = seg.index(np.arange(LAYERS), axis[..., 0], axis[..., 1])  # the axis cells (P, L)
    off = np.arange(WINDOW) - WINDOW // 2
    i, j = (i[..., None] + off)[..., None], (j[..., None] + off)[..., None, :]
    ok = ((i >= 0) & (i < nx[:, None, None]) & (j >= 0) & (j < ny[:, None, None]))
    layer = np.arange(LAYERS)[:, None, None]
    return np.where(ok, table[layer, np.clip(i, 0, table.shape[1] - 1),
                              np.clip(j, 0, table.shape[2] - 1)], -1)


def images(batch: ShowerBatch, cells: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, LAYERS, WINDOW, WINDOW) cell energies (MeV) of showers in their windows ``cells``,
    and (P,) the energy of each shower's hits outside its window (ECAL and beyond)."""
    event, ids, energy = batch.flat()
    n = len(batch)
    flat = cells.reshape(n, -1)
    key = np.where(flat >= 0, np.arange(n)[:, None] * n_cells + flat, -1).ravel()
    order = np.argsort(key)
    hit = event * n_cells + ids
    pos = np.minimum(np.searchsorted(key[order], hit), len(key) - 1)
    inside = key[order][pos] == hit  # a window's cells are distinct, and so are a shower's hits
    image = np.zeros(len(key), np.float32)
    image[order[pos[inside]]] = energy[inside]
    return image.reshape(cells.shape), np.bincount(event[~inside], energy[~inside], n)


def per_image(v, x):
    """One value per image ``v`` (P,) shaped to broadcast against images ``x`` (P, ...);
    numpy or torch."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


class Values:
    """Cell energies (MeV) <-> the values of the images that the two networks see, and the
    image quantities the model needs in those values. Two kinds:

    - ``sqrt``: ``SCALE * (e / E_p) ** POWER``, as the original (a power of 0.85 there in later
      versions): images in units of the primary's energy; a cell at the readout threshold of
      a 500 GeV shower is ~1/1,600 of its core cell, too small for either network to see.
    - ``log``: ``ln(1 + e / e0)`` with ``e0`` the readout threshold (half a MIP, MeV): the
      threshold is at ln 2 at every energy and a 100 GeV core cell at ~14, so the cells that
      make the shower's hit count and width weigh in the adversarial game.
    """

    def __init__(self, kind: str, threshold_mev: float):
        self.kind, self.e0 = kind, float(threshold_mev)

    def encode(self, e: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Cell energies (P, ...) MeV of primaries of ``energy`` (P,) MeV -> values."""
        if self.kind == "log":
            return torch.log(1 + e / self.e0)
        return SCALE * (e / per_image(energy, e)) ** POWER

    def decode(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Values -> cell energies (MeV)."""
        if self.kind == "log":
            return self.e0 * (torch.exp(x) - 1)
        return per_image(energy, x) * (x / SCALE) ** (1 / POWER)

    def response(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """E_dep / E_p (P,) of images (P, ...)."""
        return self.decode(x, energy).flatten(1).sum(1) / energy

    def rescale(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Images whose every cell energy is multiplied by ``factor`` (P,): the shape kept."""
        if self.kind == "log":
            return torch.log(1 + per_image(factor, x) * (torch.exp(x) - 1))
        return x * per_image(factor ** POWER, x)

    def with_response(self, x: torch.Tensor, energy: torch.Tensor, r: torch.Tensor):
        """Images (P, ...) rescaled so that their response E_dep / E_p is ``r`` (P,)."""
        return self.rescale(x, r / self.response(x, energy).clamp(min=1e-12))

    def threshold(self, x: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """The value of a cell at the readout threshold, shaped to broadcast against ``x``."""
        return per_image(self.encode(torch.full_like(energy, self.e0), energy), x).to(x.dtype)


def soft_cut(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``x`` with values below ``threshold`` smoothly cut to zero (a sigmoid step 10 % wide)."""
    return x * torch.sigmoid((x - threshold) / (0.05 * threshold))


class Generator(nn.Module):
    """(latent noise, conditions) -> image (P, LAYERS, WINDOW, WINDOW): a dense layer to
    7^3 x 4C, then transposed 3-D convolutions 7 -> 13 -> 25 and a last convolution; ReLU
    output (empty cells are exact zeros); ``start``: the last layer's initial bias (log values:
    above the readout threshold, ln 2, where the soft cut of ``sparse`` passes gradients)."""

    def __init__(self, latent: int, conditions: int, channels: int, start: float | None = None):
        super().__init__()
        c = channels
        self.c = c
        self.dense = nn.Linear(latent + conditions, 4 * c * 7 ** 3)
        self.net = nn.Sequential(
            nn.LeakyReLU(0.2), nn.ConvTranspose3d(4 * c, 2 * c, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2), nn.ConvTranspose3d(2 * c, c, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2), nn.Conv3d(c, 1, 3, padding=1), nn.ReLU())
        if start is not None:
            nn.init.constant_(self.net[-2].bias, start)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.dense(torch.cat([z, cond], -1)).reshape(-1, 4 * self.c, 7, 7, 7)
        return self.net(h)[:, 0]


class Discriminator(nn.Module):
    """image -> (real/fake logit, ln E_p, ln E_dep (MeV), incidence angle theta (rad)): strided
    3-D convolutions 25 -> 13 -> 7 -> 4, then two dense layers; the image's summed energy also
    enters the dense part (as the original's "ECAL sum" did), as ln(E_dep / E_p): the image's
    exact response, given with it."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(
            nn.Conv3d(1, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * c * 4 ** 3 + 1, 64), nn.LeakyReLU(0.2),
                                  nn.Linear(64, 4))

    def forward(self, x: torch.Tensor, log_response: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(x[:, None]), log_response[:, None]], -1))


class ResponseLaw(nn.Module):
    """conditions -> (mean, log sigma) of ln(E_dep / E_p): a Gaussian, fitted by likelihood;
    the network gives offsets from the training sample's mean and spread (``mean``, ``std``)."""

    def __init__(self, conditions: int, mean: float, std: float, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(conditions, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.mean, self.std = float(mean), float(std)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_sigma = self.net(cond).unbind(-1)
        return (self.mean + mean * self.std,
                (float(np.log(self.std)) + log_sigma).clamp(-8.0, 2.0))


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
    """A split as images: cell energies (N, LAYERS, WINDOW, WINDOW) float32 MeV, the
    primaries, and the regression targets (ln E_p (MeV), ln E_dep / E_p (E_dep: the window's
    energy), theta)."""

    def __init__(self, batch: ShowerBatch, geom: Geometry):
        p = batch.primaries
        e, self.outside_mev = images(batch, window_cells(geom, p), geom.n_cells)
        self.primaries = p
        self.energy_mev = e
        self.targets = np.stack([np.log(p.energy_mev),
                                 np.log(e.sum((1, 2, 3)) / p.energy_mev + 1e-9),
                                 _theta(p.direction)], -1).astype(np.float32)

    def __len__(self) -> int:
        return len(self.energy_mev)


class Gan3D(NetworkGenerator):
    """The generator, the discriminator and the condition normalisation; see the module
    docstring."""

    name = "gan3d"
    training = "steps"
    config_type = Gan3DConfig
    questions: ClassVar[dict[str, str]] = {
        "data_structure": f"the ECAL as a {LAYERS} x {WINDOW} x {WINDOW} image of cells centred "
                          "on the primary's line in every layer; values 10 sqrt(e / E) or "
                          "ln(1 + e / threshold) (option values)",
        "condition_encoding": "ln E standardised, theta (rad), cos and sin phi, particle one-hot",
        "tuning": "adversarial (non-saturating BCE, real labels 0.9, R1 penalty, Adam beta1 "
                  "0.5) plus auxiliary regressions of E, the response E_dep / E and theta by "
                  "the discriminator; generator weights chosen by the validation FPD",
        "model_format": "PyTorch file (torch.load weights_only: tensors and plain data)"}
    loss_weights: ClassVar[dict[str, float]] = {"d_adv": 1.0, "d_aux": 1.0, "d_r1": 1.0,
                                                "g_adv": 1.0, "g_aux": 1.0, "g_response": 1.0,
                                                "response_nll": 1.0}
    stages: ClassVar[dict[str, tuple[str, ...]]] = {"generator": ("g_adv", "g_aux",
                                                                  "g_response", "response_nll"),
                                                    "discriminator": ("d_adv", "d_aux", "d_r1")}
    adam_betas: ClassVar[tuple[float, float]] = (0.5, 0.999)

    def selection_loss(self, stage: str, record: dict) -> float:
        """The generator's best weights are those whose validation showers are closest to
        Geant4's (the FPD of the high-level observables): adversarial losses do not fall as
        the generator improves."""
        return record["fpd"] if stage == "generator" else super().selection_loss(stage, record)

    def __init__(self, geom: Geometry, particles: list[str], cfg: Gan3DConfig, norms: dict):
        super().__init__(geom, particles, cfg, norms)
        self.loss_weights = {**self.loss_weights, "d_aux": cfg.aux_weight,
                             "g_aux": cfg.aux_weight, "g_response": cfg.response_weight}
        self.generator = Generator(cfg.latent, 4 + len(particles), cfg.channels,
                                   start=1.0 if cfg.values == "log" else None)
        self.discriminator = Discriminator(cfg.channels)
        self.values = Values(cfg.values, THRESHOLD_MIP * norms.get("mip_mev", 0.0))
        if cfg.response_law:  # part of the generator's stage: selected with its weights
            self.generator.law = ResponseLaw(4 + len(particles), norms["aux_mean"][1],
                                             norms["response_std"])
        _require_grid(geom)

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
                 "mip_mev": float(np.median(geom.mip_energy[geom.cells["layer"] < LAYERS])),
                 # eta is no condition (theta is): no eta range, which near the axis would
                 # refuse directions only a little closer to it than the training sample's
                 "ranges": {k: v for k, v in TrainingRanges.of(data.primaries).to_dict().items()
                            if k != "eta"}}
        return cls(geom, particle_names(data.primaries.pdg), cfg or Gan3DConfig(), norms)

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
        values = self.values
        energy = torch.from_numpy(data.primaries.energy_mev[index]).float()
        real = values.encode(torch.from_numpy(data.energy_mev[index]), energy)
        target = torch.from_numpy(data.targets[index])
        if self.cfg.sparse:  # the cells that become hits; the response is theirs
            threshold = values.threshold(real, energy)
            real = real * (real >= threshold)
            target = torch.cat([target[:, :1],
                                torch.log(values.response(real, energy) + 1e-9)[:, None],
                                target[:, 2:]], -1)
        penalise = self.cfg.r1 > 0 and torch.is_grad_enabled()
        real.requires_grad_(penalise)
        cond = self.conditions(data.primaries.subset(index))
        z = torch.from_numpy(rng.standard_normal((len(index), self.cfg.latent)).astype(np.float32))
        fake = self.generator(z, cond)
        if self.cfg.sparse:
            fake = soft_cut(fake, threshold)
        law = torch.zeros(())
        if self.cfg.response_law:  # the shape at the real shower's response; the law by NLL
            fake = values.with_response(fake, energy, torch.exp(target[:, 1]))
            mean, log_sigma = self.generator.law(cond)
            law = (log_sigma + 0.5 * ((target[:, 1] - mean) / log_sigma.exp()) ** 2).sum()
        bce = nn.functional.binary_cross_entropy_with_logits
        log_r = torch.log(values.response(fake, energy) + 1e-6)
        d_real = self.discriminator(real, torch.log(values.response(real, energy) + 1e-6))
        d_fake = self.discriminator(fake.detach(), log_r.detach())
        d_adv = (bce(d_real[:, 0], torch.full_like(d_real[:, 0], 0.9), reduction="sum")
                 + bce(d_fake[:, 0], torch.zeros_like(d_fake[:, 0]), reduction="sum"))
        r1 = torch.zeros(())
        if penalise:  # R1 (Mescheder et al. 2018): flat discriminator around the real data
            grad, = torch.autograd.grad(d_real[:, 0].sum(), real, create_graph=True)
            r1 = 0.5 * self.cfg.r1 * grad.pow(2).sum()
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        g_out = functional_call(self.discriminator, frozen, (fake, log_r))
        n = float(len(index))
        return {"d_adv": (d_adv, n), "d_aux": (self._aux(d_real, target).sum(), n), "d_r1": (r1, n),
                "g_adv": (bce(g_out[:, 0], torch.ones_like(g_out[:, 0]), reduction="sum"), n),
                "g_aux": (self._aux(g_out, target).sum(), n),
                "g_response": ((torch.exp(log_r - target[:, 1]) - 1).abs().sum(), n),
                "response_nll": (law, n)}

    # ---- generation --------------------------------------------------------------------------
    def export_module(self) -> nn.Module:
        if "_program" not in self.__dict__:  # plain attribute: not a registered submodule
            self.__dict__["_program"] = Gan3DProgram(self).eval()
        return self.__dict__["_program"]

    def export_side(self) -> dict:
        return {"layers": LAYERS, "window": WINDOW}

    @classmethod
    def host(cls, side: dict, geom: Geometry):
        """Images onto the grid's cells (place_image)."""
        if (side["layers"], side["window"]) != (LAYERS, WINDOW):
            raise FastShowerError(f"this gan3d was exported with {side['layers']} layers of "
                                  f"{side['window']} cells; this version places {LAYERS} x "
                                  f"{WINDOW}")
        return lambda out, primaries, rng: place_image(out["image"], primaries, geom)


class Gan3DProgram(nn.Module):
    """(energy MeV, position mm, direction, particle index, latent noise) -> cell energies
    (P, LAYERS, WINDOW, WINDOW) MeV in the primary's window; the host puts them on cells."""

    output_names = ("image",)

    def __init__(self, model: Gan3D):
        super().__init__()
        self.generator = model.generator
        self.law = model.generator.law if model.cfg.response_law else None
        self.values, self.sparse = model.values, model.cfg.sparse
        self.log_e = (model.norms["log_e_mean"], model.norms["log_e_std"])
        self.n_particles = len(model.particles)
        self.noise = {"z": ("normal", (model.cfg.latent,))}
        if self.law is not None:
            self.noise["z_response"] = ("normal", (1,))

    def forward(self, energy, position, direction, particle, z, z_response=None):
        cond = conditions(energy, direction, particle, self.log_e, self.n_particles)
        image = self.generator(z, cond)
        if self.sparse:
            image = soft_cut(image, self.values.threshold(image, energy))
        if self.law is not None:
            mean, log_sigma = self.law(cond)
            image = self.values.with_response(image, energy,
                                              torch.exp(mean + log_sigma.exp() * z_response[:, 0]))
        return (self.values.decode(image, energy),)


def place_image(image: np.ndarray, primaries: Primaries, geom: Geometry) -> ShowerBatch:
    """Showers from window images (MeV): each cell above the readout threshold onto its grid
    cell (cells off the grid are dropped, as Geant4's energy there would be)."""
    cells = window_cells(geom, primaries)
    n = len(primaries)
    shower = np.broadcast_to(np.arange(n)[:, None], (n, cells[0].size)).ravel()
    ids, e = cells.ravel(), image.reshape(-1).astype(np.float64)
    keep = (ids >= 0) & (e >= THRESHOLD_MIP * geom.mip_energy[np.maximum(ids, 0)])
    return to_batch(primaries, geom, shower[keep], ids[keep], e[keep])
