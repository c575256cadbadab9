"""basin: what a model's update tells apart, near the true image.

Gradient inversion needs images near the truth to mismatch the update a little, and images far from
it a lot. For each model, one photo in one local step (lr 0.01, 4 victims), the observed update is
compared (cosine distance, `invgrad`'s default) with the update the client would have sent for the
true image changed in one way: pixel noise (std 0.0025 and 0.0125 of the pixel range), the
brightness moved by 0.05 toward mid-grey, and the contrast scaled by 0.8 about each channel's mean
(the last column: the changed images' mean PSNR, in that order). `noise / brightness`: the
distance of the stronger noise over that of the brightness change, though the noise costs the
image far fewer dB. Distances in float64 (a sigmoid LeNet's sit below float32's resolution). No
attack runs; each row is a few updates.

How to read it: on a sigmoid LeNet, Flower's quickstart CNN and the ConvNet without BatchNorm, the
stronger noise costs a fraction of what the brightness change costs: the update weighs an image's
coarse content, which carries its PSNR, above faint noise, and an inversion is drawn toward the
right brightness and contrast first. With BatchNorm after every convolution (Geiping et al.'s
ConvNet, at either width) and one image in the batch, the faint noise costs more than the
brightness change, which BatchNorm hides but for the zero padding at the border (a plain scaling of
the model input it hides entirely). A likely reason: BatchNorm divides each channel by its spread
over the batch's own images and positions, so a channel that responds little to a smooth image is
scaled up, noise and all. The update is then dominated by fine detail an inversion from noise does
not get right, and the truth lies in a basin narrower than the inversion's steps: `invgrad` stalls
on that plateau (the `grey_starts` section scores what it reaches). Four images in the batch lower
the ratio, but not to the other models'. All of this is the update alone: the running statistics a
client returns with it give the brightness and contrast away (the `bn_stats` section).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_realistic import Case, victim
from fedattack.attacks.engine import DISTANCES, target, trial_update
from fedattack.metrics.images import psnr
from fedattack.models.architectures import convnet

CONVNET = ("model.name=convnet", "model.activation=relu")
MODELS = {  # name: (overrides, images in the client's one batch)
    "LeNet sigmoid": (("model.name=lenet", "model.activation=sigmoid"), 1),
    "quickstart CNN": (("model.name=quickstart-cnn", "model.activation=relu"), 1),
    "ConvNet (width 8)": ((*CONVNET, "model.width=8"), 1),
    "ConvNet (width 32)": ((*CONVNET, "model.width=32"), 1),
    "ConvNet (width 8), batch of 4": ((*CONVNET, "model.width=8"), 4),
    "ConvNet (width 8) without BatchNorm": (("model.name=benchmarks.bench_basin:convnet_without_batchnorm",), 1),
}
NOISE = (0.0025, 0.0125)  # pixel noise std, as a share of the pixel range
SHIFT = 0.05  # brightness moved toward mid-grey
CONTRAST = 0.8  # contrast scaled about each channel's mean
DISTANCE = "cosine"


def convnet_without_batchnorm(in_shape, num_classes, act) -> torch.nn.Module:
    """fedattack's `convnet` at width 8 with ReLU, its BatchNorm layers taken out (a
    model.name=module:fn builder)."""
    model = convnet(in_shape, num_classes, torch.nn.ReLU, width=8)
    model.body = torch.nn.Sequential(*(m for m in model.body if not isinstance(m, torch.nn.BatchNorm2d)))
    return model


def in_double(obs):
    """The trial update and the observed target in float64: on a sigmoid LeNet the distances
    sit below float32's resolution."""
    trial = trial_update(obs)
    fm = trial.model
    fm.module.double()
    fm.params = {k: v.double() for k, v in fm.params.items()}
    fm.buffers = {k: v.double() if v.is_floating_point() else v for k, v in fm.buffers.items()}
    return trial, {k: v.double() for k, v in target(obs).items()}


def changes(px: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The true image (N, C, H, W, pixels in [0, 1]) changed in each way, clipped to the pixel range."""
    mean = px.mean((2, 3), keepdim=True)
    out = {f"noise {s}": px + s * torch.randn(px.shape, generator=gen) for s in NOISE}
    out[f"brightness {SHIFT}"] = px + SHIFT * torch.sign(0.5 - mean)
    out[f"contrast x{CONTRAST}"] = mean + CONTRAST * (px - mean)
    return {k: v.clamp(0, 1) for k, v in out.items()}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    seeds = (0,) if quick else (0, 1, 2, 3)
    rows = []
    for model, (overrides, images) in list(MODELS.items())[: 2 if quick else None]:
        case = Case(model, ("data.name=photos", *overrides, "client.local_steps=1", f"client.batch_size={images}"),
                    images)
        dist: dict[str, list[float]] = {}
        score: dict[str, list[float]] = {}
        for seed in seeds:
            obs, truth, _ = victim(case, seed)
            trial, observed = in_double(obs)
            px = obs.data.to_pixels(truth.images.float())
            with torch.no_grad():
                for name, changed in changes(px, torch.Generator().manual_seed(seed)).items():
                    d = DISTANCES[DISTANCE](trial(obs.data.normalize(changed.double()), truth.labels), observed)
                    dist.setdefault(name, []).append(float(d))
                    score.setdefault(name, []).extend(psnr(a, b) for a, b in zip(changed.numpy(), px.numpy()))
        row = {"model": model, "update entries": sum(v.numel() for v in obs.update.values())}
        row.update({name: float(np.mean(d)) for name, d in dist.items()})
        row["noise / brightness"] = float(np.mean(dist[f"noise {NOISE[-1]}"]) / np.mean(dist[f"brightness {SHIFT}"]))
        row["changed images (dB)"] = " / ".join(f"{np.mean(v):.0f}" for v in score.values())
        rows.append(row)
        print(row, flush=True)
    return rows
