"""One attack job: run an attack on an Observation, then score it against the Truth.

The attack call receives the Observation only; the Truth enters after the attack returns,
in `score`. What an attack raises becomes the job's result, never a crash of the audit:

- an expected failure (`EXPECTED_FAILURES`: an AttackFailure, which an attack raises when the
  observation does not fit it, or another FedattackError, a diverged optimization, out of
  memory) is status "failed";
- anything else is status "error": a bug, in the attack or in what it calls.

Both keep a one-line reason (`error`) and the whole traceback (`traceback`, which the run
directory writes to errors/). Strict jobs (`AttackJob.strict`, on wherever the environment
variable FEDATTACK_STRICT is set to 1 when the job is made, as the test suite sets it) raise
the "error" kind instead of recording it, so a programming error cannot pass for an attack
that failed. Errors outside the attack call (scoring) always raise.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedattack.attacks import ATTACKS, AttackContext
from fedattack.errors import AttackFailure, FedattackError
from fedattack.metrics import score
from fedattack.metrics.lpips import lpips_fn
from fedattack.results import JobResult, Score
from fedattack.threat import Observation, Truth

STRICT_ENV = "FEDATTACK_STRICT"
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    FedattackError, FloatingPointError, torch.OutOfMemoryError, MemoryError)


def strict_from_env() -> bool:
    """Whether jobs made in this process raise unexpected attack exceptions (FEDATTACK_STRICT=1)."""
    return os.environ.get(STRICT_ENV, "0") not in ("", "0")


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
    success_margin: float = 0.5  # dB of PSNR above the flat-image baseline a leaking row needs
    lpips_weights: str | None = None  # where LPIPS's weights are (None: the usual places; see metrics.lpips)
    epsilon: float = float("nan")  # the client's reported DP epsilon (report metadata only)
    unscored: str = ""  # why there is no Truth to score against (the job then runs with truth None)
    timeout: float = 0.0  # seconds the job may run before it is stopped and recorded as failed (0: no limit)
    strict: bool = field(default_factory=strict_from_env)  # raise what is not an expected failure

    @property
    def scope(self) -> str:
        return "aggregate" if self.observation.num_clients > 1 else "client"


def failed_result(job: AttackJob, *, status: str, error: str, details: str = "", seconds: float = 0.0,
                  num_images: int = 0, device: str = "cpu") -> JobResult:
    """The result of a job that produced no reconstruction: a one-line reason, the whole story."""
    lines = error.strip().splitlines()
    return JobResult(round=job.round, client=job.client, attack=job.attack, defense=job.defense, status=status,
                     seconds=seconds, score=Score(num_images=num_images), adaptive=job.adaptive, scope=job.scope,
                     device=device, epsilon=job.epsilon, error=(lines[0] if lines else "")[:300],
                     traceback=details or error)


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


def run_job(job: AttackJob, truth: Truth | None) -> JobResult:
    """Run one attack and score it. Attack exceptions become failed or error results (strict
    jobs raise the unexpected ones). Without a Truth (the client sent no ground truth:
    `job.unscored` says why) the result keeps the reconstruction and the recovered labels,
    unscored."""
    torch.set_num_threads(max(1, job.threads))
    set_tf32(job.tf32)
    spec = ATTACKS.get(job.attack)
    device = _device()
    ctx = AttackContext(device=device, seed=job.seed, labels=job.labels, adaptive=job.adaptive)
    t0 = time.perf_counter()
    try:
        if not all(bool(torch.isfinite(u).all()) for u in job.observation.update.values()):
            raise AttackFailure("the update holds NaN or infinity (the client's training diverged, or the model's "
                                "output is not finite): there is nothing to invert")
        recon = spec(job.observation.to(device), job.params, ctx)
        if recon.images is not None and not torch.isfinite(recon.images).all():
            raise FloatingPointError("the reconstruction diverged (NaN or inf)")
    except Exception as exc:  # noqa: BLE001 - an attack's exception is its job's result
        expected = isinstance(exc, EXPECTED_FAILURES)
        if job.strict and not expected:
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return failed_result(job, status="failed" if expected else "error", error=f"{type(exc).__name__}: {exc}",
                             details=traceback.format_exc(), seconds=time.perf_counter() - t0,
                             num_images=len(truth.labels) if truth is not None else 0, device=str(device))
    seconds = time.perf_counter() - t0
    try:
        return _scored(job, recon, truth, seconds, device)
    except Exception as exc:  # noqa: BLE001 - a reconstruction that cannot be scored ends its own job
        if job.strict:
            raise
        return failed_result(job, status="error", error=f"scoring the reconstruction: {type(exc).__name__}: {exc}",
                             details=traceback.format_exc(), seconds=seconds,
                             num_images=len(truth.labels) if truth is not None else 0, device=str(device))


def _scored(job: AttackJob, recon, truth: Truth | None, seconds: float, device: torch.device) -> JobResult:
    """The ok result of a finished attack: scored against `truth`, or unscored without one."""
    spec_data = job.observation.data
    labels = recon.labels.detach().cpu().numpy() if recon.labels is not None else None
    features = recon.info.get("features")
    features = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else None
    if truth is None:
        recon_px = None
        if recon.images is not None and len(recon.images):
            recon_px = spec_data.to_pixels(recon.images.detach().float().cpu()).numpy()
        return JobResult(round=job.round, client=job.client, attack=job.attack, defense=job.defense, status="ok",
                         seconds=seconds, adaptive=job.adaptive, scope=job.scope, device=str(device),
                         epsilon=job.epsilon, unscored=job.unscored or "no ground truth", recon_pixels=recon_px,
                         score=Score(num_images=0 if recon_px is None else len(recon_px)),
                         recon_labels=labels, recon_features=features)
    s = score(recon, truth, spec_data, job.success_ssim, job.success_margin, lpips_fn(job.lpips_weights))
    truth_px = spec_data.to_pixels(truth.images.float().cpu()).numpy()
    recon_px, matched = None, None
    if recon.images is not None and s.per_image is not None:  # in the private images' order, like truth_px
        rp = spec_data.to_pixels(recon.images.detach().float().cpu()).numpy()
        match = np.asarray(s.per_image.match)
        recon_px = np.stack([rp[j] if j >= 0 else np.full_like(truth_px[0], 0.5) for j in match])
        matched = match >= 0
        if labels is not None and labels.ndim == 1 and len(labels) == len(rp):
            labels = np.array([labels[j] if j >= 0 else -1 for j in match], dtype=np.int64)
    return JobResult(round=job.round, client=job.client, attack=job.attack, defense=job.defense, status="ok",
                     seconds=seconds, score=s, adaptive=job.adaptive, scope=job.scope, device=str(device),
                     epsilon=job.epsilon, truth_pixels=truth_px, recon_pixels=recon_px, recon_labels=labels,
                     recon_matched=matched, recon_features=features)
