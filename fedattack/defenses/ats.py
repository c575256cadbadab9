"""`ats`: Gao et al., Privacy-preserving Collaborative Learning with Automatic Transformation
Search, CVPR 2021.

The client trains on transformed images: each image gets a random crop (zero padding 4) and
a random horizontal flip, then the transformations of a searched policy in order. A policy
is written as indices into the paper's list of 50 transformations, e.g. "21-13-3";
several policies joined by "+" ("3-1-7+43-18-18") are picked at random per image, as in
the authors' code. Each transformation is (operation, magnitude index) with the magnitude
ranges of AutoAugment; the sign of signed magnitudes is random. As in the authors' code,
every transformation of the chosen policy is applied (their per-transformation
probabilities are not used).

Transformations run in pixel space on 8-bit images with torchvision's functional API;
randomness comes from the client's seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.errors import ConfigError

# The paper's transformation list: (operation, magnitude index 0..9).
TRANSFORMATIONS: list[tuple[str, int]] = [
    ("invert", 7), ("contrast", 6), ("rotate", 2), ("translateX", 9), ("sharpness", 1),
    ("sharpness", 3), ("shearY", 2), ("translateY", 2), ("autocontrast", 5), ("equalize", 2),
    ("shearY", 5), ("posterize", 5), ("color", 3), ("brightness", 5), ("sharpness", 9),
    ("brightness", 9), ("equalize", 5), ("equalize", 1), ("contrast", 7), ("sharpness", 5),
    ("color", 5), ("translateX", 5), ("equalize", 7), ("autocontrast", 8), ("translateY", 3),
    ("sharpness", 6), ("brightness", 6), ("color", 8), ("solarize", 0), ("invert", 0),
    ("equalize", 0), ("autocontrast", 0), ("equalize", 8), ("equalize", 4), ("color", 5),
    ("equalize", 5), ("autocontrast", 4), ("solarize", 4), ("brightness", 3), ("color", 0),
    ("solarize", 1), ("autocontrast", 0), ("translateY", 3), ("translateY", 3), ("autocontrast", 1),
    ("solarize", 1), ("equalize", 5), ("invert", 0), ("translateY", 3), ("autocontrast", 1),
]

MAGNITUDES: dict[str, np.ndarray] = {
    "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10), "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.5, 10),
    "posterize": np.round(np.linspace(8, 4, 10)).astype(int), "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.5, 10), "sharpness": np.linspace(0.0, 0.5, 10),
    "brightness": np.linspace(0.0, 0.5, 10),
}


def apply_operation(img: torch.Tensor, op: str, m: float, sign: float) -> torch.Tensor:
    """One transformation of an 8-bit (C, H, W) image."""
    import torchvision.transforms.v2.functional as TF  # torchvision loads only where ATS runs (1-2 s per process)

    h, w = img.shape[-2:]
    if op in ("shearX", "shearY"):
        angle = math.degrees(math.atan(m)) * sign
        shear = [angle, 0.0] if op == "shearX" else [0.0, angle]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=TF.InterpolationMode.BILINEAR, fill=0)
    if op == "translateX":
        return TF.affine(img, angle=0.0, translate=[round(m * w * sign), 0], scale=1.0, shear=[0.0, 0.0], fill=0)
    if op == "translateY":
        return TF.affine(img, angle=0.0, translate=[0, round(m * h * sign)], scale=1.0, shear=[0.0, 0.0], fill=0)
    if op == "rotate":
        return TF.rotate(img, float(m), interpolation=TF.InterpolationMode.BILINEAR, fill=128)
    if op == "color":
        return TF.adjust_saturation(img, 1 + m * sign)
    if op == "contrast":
        return TF.adjust_contrast(img, 1 + m * sign)
    if op == "sharpness":
        return TF.adjust_sharpness(img, 1 + m * sign)
    if op == "brightness":
        return TF.adjust_brightness(img, 1 + m * sign)
    if op == "posterize":
        return TF.posterize(img, int(m))
    if op == "solarize":
        return img if m > 255 else TF.solarize(img, float(m))
    if op == "autocontrast":
        return TF.autocontrast(img)
    if op == "equalize":
        return TF.equalize(img)
    if op == "invert":
        return TF.invert(img)
    raise ValueError(op)


def parse_policy(text: str) -> list[list[int]]:
    try:
        chains = [[int(i) for i in part.split("-")] for part in str(text).split("+")]
    except ValueError:
        chains = []
    if not chains or any(not c for c in chains) or any(not 0 <= i < len(TRANSFORMATIONS) for c in chains for i in c):
        raise ConfigError("ats.policy", f"expected indices 0..{len(TRANSFORMATIONS) - 1} joined by '-' (several "
                                        f"policies joined by '+'), e.g. 21-13-3; got {text!r}")
    return chains


@dataclass
class ATSParams:
    policy: str = "21-13-3"  # the paper's searched policy for its ConvNet on CIFAR-100

    def validate(self, name: str) -> None:
        parse_policy(self.policy)


def transform_image(img: torch.Tensor, chain: list[int], gen: torch.Generator) -> torch.Tensor:
    """Random crop (padding 4), random flip, then the chain's transformations (8-bit image)."""
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    top, left = (int(v) for v in torch.randint(0, 9, (2,), generator=gen))
    img = padded[:, top:top + h, left:left + w]
    if torch.rand((), generator=gen) < 0.5:
        img = img.flip(-1)
    for idx in chain:
        op, level = TRANSFORMATIONS[idx]
        m = float(MAGNITUDES[op][level]) if op in MAGNITUDES else 0.0
        sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
        img = apply_operation(img, op, m, sign)
    return img


def ats_batch(x: torch.Tensor, y: torch.Tensor, params: ATSParams, ctx: DefenseContext):
    if ctx.data is None:
        raise ConfigError("ats", "needs the data's normalization (DefenseContext.data)")
    chains = parse_policy(params.policy)
    pixels = (ctx.data.to_pixels(x.detach()) * 255).round().to(torch.uint8)
    out = []
    for img in pixels:
        chain = chains[int(torch.randint(0, len(chains), (1,), generator=ctx.generator))]
        out.append(transform_image(img, chain, ctx.generator))
    x01 = torch.stack(out).to(x.dtype) / 255.0 if out else x
    return (ctx.data.normalize(x01) if out else x), y


register_defense(DefenseSpec(
    name="ats", params=ATSParams, where="training", main_param="policy", on_batch=ats_batch,
    keeps_signs=lambda params: True,  # it transforms the images, never their labels
    paper="Gao et al., Privacy-preserving Collaborative Learning with Automatic Transformation Search, CVPR 2021"))
