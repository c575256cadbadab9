"""LPIPS, the learned perceptual distance of Zhang et al. (The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric, CVPR 2018), as breaching, Plato and GradAttack report it.

Version 0.1 on AlexNet: both images scaled to [-1, 1] and shifted/scaled per channel, the
five ReLU outputs of torchvision's AlexNet features, each unit-normalized over channels, the
squared differences weighted per channel by the published linear layers, averaged over
space and summed over layers. Lower is closer; identical images score 0.

Two sets of weights are needed and nothing is downloaded without consent:

- the backbone: torchvision's ImageNet AlexNet (`alexnet-owt-7be5be79.pth`), looked up in
  `audit.lpips_weights` and in the torch hub cache (`torch.hub.get_dir()/checkpoints`);
  `audit.lpips_download=true` lets torchvision download it into that cache;
- the linear layers (`alex.pth`, version 0.1), looked up in `audit.lpips_weights` and in the
  installed `lpips` package (BSD licence, 54 kB; `pip install lpips`), which ships them.

Where either is missing, `locate` says which and how to get it, and the LPIPS column stays
empty. Grey images are repeated over three channels; images under 32 px a side are upsampled
to 32 first (AlexNet's strides leave nothing of smaller ones).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1
LINEAR_FILE = "alex.pth"  # LPIPS v0.1 linear layers for AlexNet
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # AlexNet features up to relu1 .. relu5
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIDE = 32  # smaller images are upsampled (bilinear) to this side first


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips_package_linear() -> Path | None:
    """The linear weights inside an installed `lpips` package (found without importing it)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / LINEAR_FILE
    return path if path.is_file() else None


def locate(weights_dir: str | None = None) -> tuple[tuple[Path, Path] | None, str]:
    """((backbone, linear) weight files, "") where both are on this machine, else (None, why not)."""
    folder = Path(weights_dir).expanduser() if weights_dir else None
    backbone = next((p for p in ([folder / BACKBONE_FILE] if folder else []) + [_hub_checkpoints() / BACKBONE_FILE]
                     if p.is_file()), None)
    linear = folder / LINEAR_FILE if folder and (folder / LINEAR_FILE).is_file() else _lpips_package_linear()
    missing = []
    if backbone is None:
        where = f"{folder} or " if folder else ""
        missing.append(f"torchvision's ImageNet AlexNet weights ({BACKBONE_FILE}) are not in {where}"
                       f"{_hub_checkpoints()} (set audit.lpips_download=true to let torchvision download them)")
    if linear is None:
        where = f"{folder} and " if folder else ""
        missing.append(f"the LPIPS v0.1 linear layers ({LINEAR_FILE}) are not in {where}an installed lpips "
                       f"package (pip install lpips, or put the file in audit.lpips_weights)")
    if missing:
        return None, "; ".join(missing)
    return (backbone, linear), ""


def download_backbone() -> str:
    """Let torchvision download AlexNet's ImageNet weights into the torch hub cache (the
    user consented with audit.lpips_download=true); '' on success, else why it failed."""
    if (_hub_checkpoints() / BACKBONE_FILE).is_file():
        return ""
    try:
        from torchvision.models import AlexNet_Weights

        AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a full disk: all say the same
        return f"downloading AlexNet's weights failed ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return ""


class LPIPS(torch.nn.Module):
    """LPIPS v0.1 on AlexNet; inputs are (N, C, H, W) images in [0, 1], C = 1 or 3."""

    def __init__(self, backbone: dict[str, torch.Tensor], linear: dict[str, torch.Tensor]):
        super().__init__()
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        net.load_state_dict(backbone)
        self.slices = torch.nn.ModuleList(torch.nn.Sequential(*net.features[a:b]) for a, b in SLICES)
        self.lins = torch.nn.ParameterList(
            torch.nn.Parameter(linear[f"lin{k}.model.1.weight"].reshape(1, c, 1, 1).float(), requires_grad=False)
            for k, c in enumerate(CHANNELS))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_SIDE:  # AlexNet's strides and pools need 32 px to keep every layer
            x = torch.nn.functional.interpolate(x, size=(max(MIN_SIDE, x.shape[-2]), max(MIN_SIDE, x.shape[-1])),
                                                mode="bilinear", align_corners=False)
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for block in self.slices:
            h = block(h)
            out.append(h / (torch.sqrt((h ** 2).sum(dim=1, keepdim=True)) + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self._features(a), self._features(b)
        return sum(((x - y) ** 2 * w).sum(dim=1).mean(dim=(1, 2)) for x, y, w in zip(fa, fb, self.lins))


@lru_cache(maxsize=2)
def _model(backbone: Path, linear: Path) -> LPIPS:
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    return LPIPS(load(backbone), load(linear))


def lpips_fn(weights_dir: str | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """A function (recon, truth) -> per-image LPIPS for (N, C, H, W) arrays in [0, 1], or None
    where the weights are not on this machine (`locate` says why). Loaded once per process."""
    found, _ = locate(weights_dir)
    if found is None:
        return None
    model = _model(*found)

    def distance(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
        a = torch.as_tensor(np.ascontiguousarray(recon), dtype=torch.float32)
        b = torch.as_tensor(np.ascontiguousarray(truth), dtype=torch.float32)
        return model(a, b).numpy().astype(np.float64)

    return distance
