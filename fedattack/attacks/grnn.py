"""GRNN (Ren et al., "GRNN: Generative Regression Neural Network - A Data Leakage Attack for
Federated Learning", ACM TIST 2022).

No pretrained prior: a generator is trained on the fly, from scratch, for the one update
it attacks. From fixed Gaussian inputs v (one per private sample) it produces both the
images (a GLU up-sampling branch, sigmoid output) and soft labels (a linear branch, softmax);
its weights are fitted so that the gradient of the server's model on (images, soft labels)
matches the observed one:

    min_theta  ||g(x) - g_obs||_2^2 + W(g(x), g_obs) + tv * TV(x),   (x, y) = G_theta(v)

W is the Wasserstein-2 distance between the two gradients taken as point masses (which the
authors' code computes: the Euclidean distance between the flattened gradients), or, with
`grnn.wd=sorted`, between the empirical distributions of their entries. TV is the mean
squared neighbour difference (weights from the authors: 1e-3 for LeNet, 1e-6 for ResNet).
Optimizer: RMSprop, lr 1e-4, momentum 0.99, 1000 iterations. Recovered labels are the
argmax of the soft labels (`grnn.labels=recover` fixes them by label recovery instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.engine import Params, l2_distance, num_images, target, trial_update
from fedattack.attacks.labels import recover_labels
from fedattack.errors import AttackFailure
from fedattack.validate import check_choice, check_range
from fedattack.threat import Observation, Reconstruction



@dataclass
class GRNNParams:
    iterations: int = 1000
    lr: float = 1e-4  # RMSprop
    momentum: float = 0.99
    latent_dim: int = 128  # g_in
    width: int = 32  # d
    tv: float | None = None  # None: 1e-6 for ResNets, 1e-3 otherwise (the authors' choice)
    wd: str = "point"  # point (authors' code) | sorted (1-D distributions of gradient entries)
    labels: str = "generate"  # generate (the label branch, the paper) | recover (label recovery, fixed)

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "momentum", self.momentum, 0, 1)
        check_range(name, "latent_dim", self.latent_dim, 1)
        check_range(name, "width", self.width, 1)
        if self.tv is not None:
            check_range(name, "tv", self.tv, 0)
        check_choice(name, "wd", self.wd, ["point", "sorted"])
        check_choice(name, "labels", self.labels, ["generate", "recover"])


class GLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        return x[:, :c] * torch.sigmoid(x[:, c:])


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(cout * 2), GLU())


class GRNNGenerator(nn.Module):
    """The authors' generator: v -> (image in [0, 1], soft label)."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, num_classes: int, width: int = 32):
        super().__init__()
        self.latent_dim, self.image_size = latent_dim, image_size
        native = 2 ** max(3, math.ceil(math.log2(image_size)))
        blocks = int(math.log2(native)) - 3
        self.native = native
        self.label = nn.Linear(latent_dim, num_classes)
        self.block0 = nn.Sequential(nn.ConvTranspose2d(latent_dim, width * 2**blocks * 2, 4, 1, 0), GLU())
        self.blocks = nn.Sequential(*[_up_block(width * 2 ** (b + 1), width * 2**b) for b in reversed(range(blocks))])
        self.out = _up_block(width, channels)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.softmax(self.label(v), dim=1)
        x = self.out(self.blocks(self.block0(v[:, :, None, None])))
        x = torch.sigmoid(x)
        if self.native != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x, y


def wasserstein(trial: Params, target: Params, kind: str) -> torch.Tensor:
    a = torch.cat([trial[k].flatten() for k in target])
    b = torch.cat([target[k].flatten() for k in target])
    if kind == "point":
        return torch.sqrt(((a - b) ** 2).sum() + 1e-20)
    return torch.sqrt(((torch.sort(a).values - torch.sort(b).values) ** 2).mean() + 1e-20)


def squared_tv(x: torch.Tensor) -> torch.Tensor:
    """The authors' TV: 2 * (mean squared vertical + horizontal differences) / batch."""
    h = ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum() / x[:, :, 1:, :][0].numel()
    w = ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum() / x[:, :, :, 1:][0].numel()
    return 2 * (h + w) / x.shape[0]


@register_attack("grnn", params=GRNNParams,
                 paper="Ren et al., GRNN: Generative Regression Neural Network - A Data Leakage Attack for "
                       "Federated Learning, ACM TIST 2022")
def grnn(obs: Observation, params: GRNNParams, ctx: AttackContext) -> Reconstruction:
    device = ctx.device
    n = num_images(obs)
    c, h, w = obs.data.shape
    if h != w:
        raise AttackFailure(f"grnn: square images only, got {h}x{w}")
    trial_fn = trial_update(obs, device, adaptive=True)  # the known defenses, modelled
    observed = target(obs, device)
    tv = params.tv if params.tv is not None else (1e-6 if obs.model.name.startswith("resnet") else 1e-3)
    fixed_labels, method = None, "generated"
    if params.labels == "recover":
        fixed_labels, method = recover_labels(obs, n, ctx.labels)
        fixed_labels = fixed_labels.to(device)

    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(ctx.seed)
        gen = GRNNGenerator(params.latent_dim, c, h, obs.data.num_classes, params.width).to(device)
    v = torch.randn((n, params.latent_dim), generator=ctx.generator()).to(device)
    opt = torch.optim.RMSprop(gen.parameters(), lr=params.lr, momentum=params.momentum)

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        px, soft = gen(v)
        y = fixed_labels if fixed_labels is not None else soft
        trial = trial_fn(obs.data.normalize(px), y)
        l2 = l2_distance(trial, observed)
        loss = l2 + wasserstein(trial, observed, params.wd) + tv * squared_tv(px)
        return loss, px, soft

    for _ in range(params.iterations):
        opt.zero_grad(set_to_none=True)
        loss, px, soft = objective()
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, px, soft = objective()
    if not torch.isfinite(loss):
        raise FloatingPointError("the GRNN generator diverged")
    labels = fixed_labels if fixed_labels is not None else soft.argmax(1)
    return Reconstruction(images=obs.data.normalize(px.detach()), labels=labels,
                          info={"loss": float(loss), "label_method": method, "iterations": params.iterations, "tv": tv})
