"""One attack job: run an attack on an Observation, then score it against the Truth.

The attack call receives the Observation only; the Truth enters after the attack returns,
in `score`. Failures (exceptions, NaN, out of memory) become failed results, never crashes.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedattack.attacks import ATTACKS, AttackContext
from fedattack.metrics import score
from fedattack.threat import Observation, Truth


@dataclass
class AttackJob:
    round: int
    client: int | str  # partition id, or "aggregate"
    attack: str
    params: Any
    observation: Observation
    seed: int = 0
    labels: str = "auto"
    adaptive: bool = False
    defense: str = "none"
    threads: int = 1
    tf32: bool = False  # TF32 matmuls and convolutions on a GPU
    success_ssim: float = 0.5
    epsilon: float = float("nan")  # the client's reported DP epsilon (report metadata only)


@dataclass
class JobResult:
    round: int
    client: int | str
    attack: str
    defense: str
    status: str  # ok | failed
    seconds: float
    psnr: float = float("nan")
    ssim: float = float("nan")
    mse: float = float("nan")
    label_acc: float = float("nan")
    recovered: int = 0
    num_images: int = 0
    adaptive: bool = False
    scope: str = "client"  # client | aggregate
    device: str = "cpu"
    epsilon: float = float("nan")
    error: str = ""
    info: dict = field(default_factory=dict)
    truth_pixels: np.ndarray | None = None  # (N, C, H, W) in [0, 1], for galleries
    recon_pixels: np.ndarray | None = None  # matched to truth order

    @property
    def success(self) -> bool:
        return self.status == "ok" and self.recovered > 0

    def row(self) -> dict:
        return {
            "round": self.round, "client": self.client, "attack": self.attack, "defense": self.defense,
            "adaptive": self.adaptive, "scope": self.scope, "status": self.status,
            "psnr": _r(self.psnr), "ssim": _r(self.ssim, 4), "mse": _r(self.mse, 5), "label_acc": _r(self.label_acc, 4),
            "success": self.success, "recovered": self.recovered, "num_images": self.num_images,
            "seconds": _r(self.seconds, 2), "device": self.device, "epsilon": _r(self.epsilon, 4),
            "error": self.error,
        }


def _r(x: float, nd: int = 2) -> float | str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _device() -> torch.device:
    """The GPU a Ray task was assigned (num_gpus > 0), else the CPU; outside Ray, any GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")
    except (ImportError, AttributeError):
        pass
    return torch.device("cuda")


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions. PyTorch allows it in cuDNN by default;
    gradient matching differentiates twice and compares tiny gradient differences, so attack
    jobs run in full float32 unless `audit.tf32` asks otherwise (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def run_job(job: AttackJob, truth: Truth) -> JobResult:
    """Run one attack and score it; never raises."""
    torch.set_num_threads(max(1, job.threads))
    set_tf32(job.tf32)
    spec = ATTACKS.get(job.attack)
    device = _device()
    ctx = AttackContext(device=device, seed=job.seed, labels=job.labels, adaptive=job.adaptive)
    base = dict(round=job.round, client=job.client, attack=job.attack, defense=job.defense,
                adaptive=job.adaptive, scope="aggregate" if job.observation.num_clients > 1 else "client",
                device=str(device), num_images=len(truth.labels), epsilon=job.epsilon)
    t0 = time.perf_counter()
    try:
        recon = spec(job.observation.to(device), job.params, ctx)
        if recon.images is not None and not torch.isfinite(recon.images).all():
            raise FloatingPointError("the reconstruction diverged (NaN or inf)")
    except Exception as exc:  # noqa: BLE001 - any attack failure is a recorded result
        if device.type == "cuda":
            torch.cuda.empty_cache()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return JobResult(status="failed", seconds=time.perf_counter() - t0, error=msg,
                         info={"traceback": traceback.format_exc(limit=5)}, **base)
    seconds = time.perf_counter() - t0
    s = score(recon, truth, job.observation.data, job.success_ssim)
    spec_data = job.observation.data
    truth_px = spec_data.to_pixels(truth.images.float().cpu()).numpy()
    recon_px = None
    if recon.images is not None and s.per_image is not None:
        rp = spec_data.to_pixels(recon.images.detach().float().cpu()).numpy()
        recon_px = np.stack([rp[j] if j >= 0 else np.full_like(truth_px[0], 0.5) for j in s.per_image.match])
    info = {k: v for k, v in recon.info.items() if isinstance(v, (int, float, str, bool))}
    return JobResult(status="ok", seconds=seconds, psnr=s.psnr, ssim=s.ssim, mse=s.mse, label_acc=s.label_acc,
                     recovered=s.recovered, info=info, truth_pixels=truth_px, recon_pixels=recon_px, **base)
