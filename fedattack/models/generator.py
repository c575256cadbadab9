"""Image generators for the generative attacks: architectures, training, checkpoints.

GGL (Li et al., CVPR 2022) searches the latent space of a generator trained on public
data of the victims' domain. `fedattack train-generator` (fedattack.train_generator) trains
a small DCGAN (Radford et al., ICLR 2016) or WGAN-GP (Gulrajani et al., NeurIPS 2017) with
`train_generator` on any configured dataset so that the attack runs offline:

    fedattack train-generator data.name=lfw-subset --labels 1 --exclude-victims --out gen.pt

A checkpoint is `{"meta": {...}, "state_dict": {...}}`, written with `torch.save` and read
with `torch.load(weights_only=True)`; `meta` holds plain types only (architecture, latent
dimension, image shape, what it was trained on). Generators map z ~ N(0, I) to images in
[-1, 1] (tanh); `to_pixels` maps them to [0, 1].
"""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedattack.errors import ConfigError, FedattackError, first_line

ARCHS = ("dcgan",)
LOSSES = ("dcgan", "wgan-gp")


# -- architectures ------------------------------------------------------------------

def _base_size(image_size: int) -> tuple[int, int]:
    """(number of 2x upsamplings from 4x4, generated size >= image_size)."""
    ups = max(1, math.ceil(math.log2(max(image_size, 8) / 4)))
    return ups, 4 * 2**ups


class Generator(nn.Module):
    """DCGAN generator: linear to 4x4, then (2x upsampling, 3x3 convolution, BatchNorm, ReLU)
    blocks halving the channels, tanh (upsampling + convolution instead of transposed
    convolutions avoids checkerboard artifacts).

    Sizes that are not 4 * 2^k are generated at the next such size and resized."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 32):
        super().__init__()
        self.latent_dim, self.image_size = latent_dim, image_size
        ups, self.native = _base_size(image_size)
        c0 = width * 2 ** (ups - 1)
        self.c0 = c0
        self.project = nn.Sequential(nn.Linear(latent_dim, c0 * 16), nn.BatchNorm1d(c0 * 16), nn.ReLU(True))
        blocks: list[nn.Module] = []
        c = c0
        for _ in range(ups - 1):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c // 2, 3, 1, 1),
                       nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.project(z).view(-1, self.c0, 4, 4))
        if self.native != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x


class Discriminator(nn.Module):
    """Strided convolutions with LeakyReLU; BatchNorm for DCGAN, none for WGAN-GP (its penalty
    is per sample)."""

    def __init__(self, channels: int, image_size: int, width: int = 32, norm: bool = True):
        super().__init__()
        ups, self.native = _base_size(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for i in range(ups):
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1))
            if norm and i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in, c = c, c * 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * 16, 1)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native != self.image_size:
            x = F.interpolate(x, size=(self.native, self.native), mode="bilinear", align_corners=False)
        return self.head(self.body(x).flatten(1)).squeeze(1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_generator(meta: dict) -> Generator:
    arch = meta.get("arch", "dcgan")
    if arch not in ARCHS:
        raise ValueError(f"unknown generator architecture '{arch}'; allowed: {', '.join(ARCHS)}")
    return Generator(int(meta["latent_dim"]), int(meta["channels"]), int(meta["image_size"]), int(meta["width"]))


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> pixels in [0, 1]."""
    return (x + 1) / 2


# -- checkpoints ------------------------------------------------------------------

def save_generator(path: str | Path, generator: Generator, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    torch.save({"meta": dict(meta), "state_dict": state}, path)


def load_generator(path: str | Path | None, field_name: str = "generator",
                   device: torch.device | str = "cpu") -> tuple[Generator, dict]:
    """Load a checkpoint written by `save_generator`; errors name `field_name`."""
    if not path:
        raise ConfigError(field_name, "no generator checkpoint given; train one with "
                                      "`fedattack train-generator ... --out gen.pt` and set "
                                      f"{field_name}=gen.pt")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(field_name, f"generator checkpoint not found: {p} (train one with "
                                      "`fedattack train-generator ... --out PATH`)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        meta, state = dict(ckpt["meta"]), ckpt["state_dict"]
        gen = build_generator(meta)
        gen.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        why = first_line(exc).split(". ")[0][:120]
        if isinstance(exc, pickle.UnpicklingError):
            why += "; fedattack loads checkpoints as weights only and refuses pickled code"
        raise ConfigError(field_name, f"{p} is not a fedattack generator checkpoint "
                                      f"({type(exc).__name__}: {why})") from None
    return gen.to(device).eval(), meta


def check_checkpoint(path: str | Path | None, field_name: str = "generator") -> dict:
    """Config-time check of a generator checkpoint: it loads as `load_generator` will load it
    at attack time (weights only: a checkpoint that needs pickled code is refused). Returns its
    meta; raises a ConfigError naming `field_name`."""
    _, meta = load_generator(path, field_name)
    return meta


# -- training ---------------------------------------------------------------------

@dataclass
class TrainSettings:
    loss: str = "dcgan"  # dcgan (non-saturating) | wgan-gp
    epochs: int = 1000  # lfw-subset's 80 training faces, batch 32: 2000 generator steps
    batch_size: int = 32
    latent_dim: int = 64
    width: int = 16
    lr: float | None = None  # None: 2e-4 (DCGAN) or 1e-4 (WGAN-GP)
    n_critic: int = 5  # WGAN-GP critic steps per generator step
    gp_weight: float = 10.0
    augment: bool = True  # random horizontal flips and 1-pixel shifts of the real images

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise FedattackError(f"--loss: unknown value '{self.loss}'; allowed: {', '.join(LOSSES)}")
        for name in ("epochs", "batch_size", "latent_dim", "width", "n_critic"):
            value = getattr(self, name)
            if value < 1:
                raise FedattackError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise FedattackError(f"--lr: must be > 0, got {self.lr}")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    if dx or dy:
        x = torch.roll(F.pad(x, (1, 1, 1, 1), mode="replicate"), shifts=(dy, dx), dims=(-2, -1))[..., 1:-1, 1:-1]
    return x


def _gradient_penalty(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(disc(mix).sum(), mix, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train_generator(pixels: torch.Tensor, settings: TrainSettings, seed: int = 0,
                    device: torch.device | str = "cpu",
                    log: Callable[[str], None] = lambda msg: None) -> tuple[Generator, dict]:
    """Train a generator on images `pixels` (N, C, H, W) in [0, 1]; return it (eval mode) and stats."""
    settings.validate()
    if pixels.ndim != 4 or pixels.shape[0] < 2:
        raise FedattackError("train-generator: need at least 2 training images")
    if pixels.shape[-1] != pixels.shape[-2]:
        raise FedattackError(f"train-generator: images must be square, got {tuple(pixels.shape[-2:])}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, c, size = pixels.shape[0], pixels.shape[1], pixels.shape[-1]
    wgan = settings.loss == "wgan-gp"
    G = Generator(settings.latent_dim, c, size, settings.width).to(device)
    D = Discriminator(c, size, settings.width, norm=not wgan).to(device)
    G.apply(_init_weights)
    D.apply(_init_weights)
    lr = settings.lr or (1e-4 if wgan else 2e-4)
    betas = (0.5, 0.9) if wgan else (0.5, 0.999)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    data = (pixels.float() * 2 - 1).to(device)
    b = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // b)
    d_steps = settings.n_critic if wgan else 1
    t0, c0 = time.perf_counter(), time.process_time()
    d_loss = g_loss = torch.zeros(())
    for epoch in range(settings.epochs):
        for _ in range(steps_per_epoch):
            for _ in range(d_steps):
                idx = torch.randint(0, n, (b,), generator=gen).to(device)
                real = data[idx]
                if settings.augment:
                    real = _augment(real, gen)
                z = torch.randn(b, settings.latent_dim, generator=gen).to(device)
                with torch.no_grad():
                    fake = G(z)
                if wgan:
                    d_loss = D(fake).mean() - D(real).mean() + settings.gp_weight * _gradient_penalty(D, real, fake, gen)
                else:
                    d_loss = (F.softplus(-D(real)) + F.softplus(D(fake))).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            z = torch.randn(b, settings.latent_dim, generator=gen).to(device)
            out = D(G(z))
            g_loss = -out.mean() if wgan else F.softplus(-out).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
        if (epoch + 1) % max(1, settings.epochs // 10) == 0 or epoch + 1 == settings.epochs:
            log(f"epoch {epoch + 1}/{settings.epochs}: D loss {float(d_loss.detach()):.4f}, "
                f"G loss {float(g_loss.detach()):.4f}, "
                f"{time.perf_counter() - t0:.1f} s")
    G.eval()
    stats = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
             "generator_steps": settings.epochs * steps_per_epoch,
             "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
    return G, stats


def make_meta(G: Generator, settings: TrainSettings, channels: int, **extra) -> dict:
    meta = {"arch": "dcgan", "latent_dim": G.latent_dim, "channels": channels, "image_size": G.image_size,
            "width": settings.width, "loss": settings.loss, "output": "tanh"}
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


__all__ = ["Generator", "check_checkpoint", "Discriminator", "TrainSettings", "build_generator", "train_generator", "save_generator",
           "load_generator", "to_pixels", "make_meta"]
