"""GGL: Generative Gradient Leakage (Li et al., "Auditing Privacy Defenses in Federated
Learning via Generative Gradient Leakage", CVPR 2022).

Instead of optimizing pixels, GGL searches the latent space of a generator trained on
public data of the victims' domain for an image whose gradient matches the observed one:

    z* = argmin_z  D(g(G(z), y), g_obs) / L  +  kl * KL(q(z) || N(0, I))

with g the (defended, when adaptive) gradient of the server's model, D the squared L2
distance summed over the L parameter tensors, and q(z) the Gaussian fitted to the entries
of z (the authors' latent regularizer). Labels come first, from label recovery. The
search is gradient-free by default: CMA-ES through nevergrad, in rounds of `batch`
candidates evaluated together (the authors ask 50 candidates per round for 500 rounds);
`ggl.optimizer=adam` optimizes z by gradient descent instead (lr 0.1, Adam).

The trial update is the engine's (fedattack.attacks.engine): the known local training
replayed on each candidate batch. The generator is a checkpoint (`ggl.generator=PATH`) written by `fedattack
train-generator` (see fedattack.models.generator). Adaptive variant (audit.adaptive): the known
defenses' `adapt` hooks (clipping bound, pruning mask read off the observed zeros, ...)
are applied to every trial gradient, as the authors' adaptive attack does; additive noise
is not simulated, since zero-mean noise on the trial leaves the expected L2 objective's
minimizer unchanged.

Updates of several local steps are matched by unrolling the known local SGD on the
candidate batch (in gradient units, -update / (lr * steps)).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import vmap

from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.engine import DISTANCES, Params, num_images, target, trial_update
from fedattack.attacks.labels import recover_labels
from fedattack.models.generator import load_generator, to_pixels
from fedattack.validate import check_choice, check_range
from fedattack.threat import Observation, Reconstruction



@dataclass
class GGLParams:
    generator: str | None = None  # checkpoint from `fedattack train-generator`
    optimizer: str = "cmaes"  # cmaes (nevergrad, the paper's default) | adam
    budget: int = 25000  # CMA-ES: loss evaluations (authors: 500 rounds x 50 candidates)
    batch: int = 50  # CMA-ES: candidates asked and evaluated together per round
    scale: float = 1.0  # CMA-ES: initial step size in latent units
    iterations: int = 2500  # Adam steps (authors' budget for the Adam variant)
    lr: float = 0.1  # Adam step size
    kl: float = 0.1  # weight of the KL regularizer on the latent
    loss: str = "l2"  # l2 (authors) | cosine
    restarts: int = 1  # independent searches, best by loss

    def validate(self, name: str) -> None:
        check_choice(name, "optimizer", self.optimizer, ["cmaes", "adam"])
        check_range(name, "budget", self.budget, 1)
        check_range(name, "batch", self.batch, 2)
        check_range(name, "scale", self.scale, 0, lo_open=True)
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "kl", self.kl, 0)
        check_choice(name, "loss", self.loss, ["l2", "cosine"])
        check_range(name, "restarts", self.restarts, 1)
        # the checkpoint itself is checked where the attack runs (fedattack.config.validate)


# -- pieces -------------------------------------------------------------------------

def blas_single_thread():
    """numpy's BLAS threads fight torch's on small machines; CMA-ES's eigendecompositions are
    50x slower with 2 contended threads than with 1."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def grad_distance(trial: Params, observed: Params, kind: str) -> torch.Tensor:
    """D per candidate: trial entries carry a leading candidate dimension (P, ...); squared L2
    over the L parameter tensors divided by L (the authors' scaling), or cosine distance."""
    per = DISTANCES[kind]
    scale = 1.0 / len(observed) if kind == "l2" else 1.0
    return vmap(lambda t: per(t, observed))(trial) * scale


def latent_kl(z: torch.Tensor) -> torch.Tensor:
    """KL(N(mean(z), std(z)^2) || N(0, 1)) over the entries of each latent (last dim), summed."""
    mu, var = z.mean(-1), z.var(-1, unbiased=False)
    return (-0.5 * (1 + torch.log(var + 1e-10) - mu**2 - var)).sum(-1)


def generated_images(gen: torch.nn.Module, meta: dict, z: torch.Tensor, obs: Observation) -> torch.Tensor:
    """z (..., n, d) -> images (..., n, C, H, W) in the model's input space."""
    lead = z.shape[:-1]
    px = to_pixels(gen(z.reshape(-1, z.shape[-1])))
    c, h, w = obs.data.shape
    if px.shape[1] != c:
        px = px.mean(1, keepdim=True) if c == 1 else px.expand(-1, c, -1, -1)
    if tuple(px.shape[-2:]) != (h, w):
        px = F.interpolate(px, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return obs.data.normalize(px.clamp(0, 1)).reshape(*lead, c, h, w)


# -- the attack ----------------------------------------------------------------------

def _objective(obs: Observation, params: GGLParams, ctx: AttackContext, gen: torch.nn.Module, meta: dict,
               labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (P, n, d) -> loss (P,), differentiable."""
    trial = vmap(trial_update(obs, ctx.device, adaptive=ctx.adaptive), in_dims=(0, None))
    observed = target(obs, ctx.device)

    def objective(z: torch.Tensor) -> torch.Tensor:
        x = generated_images(gen, meta, z, obs)
        return grad_distance(trial(x, labels), observed, params.loss) + params.kl * latent_kl(z)

    return objective


def _cmaes(objective, shape: tuple[int, int], params: GGLParams, seed: int, device) -> tuple[float, np.ndarray]:
    import nevergrad as ng

    dim = shape[0] * shape[1]
    param = ng.p.Array(init=np.zeros(dim))
    param.random_state = np.random.RandomState(seed % (2**32))
    optimizer = ng.families.ParametrizedCMA(scale=params.scale)(parametrization=param, budget=params.budget,
                                                                 num_workers=params.batch)
    best = (float("inf"), np.zeros(dim))
    done = 0
    with blas_single_thread(), torch.no_grad():
        while done < params.budget:
            k = min(params.batch, params.budget - done)
            cands = [optimizer.ask() for _ in range(k)]
            z = torch.tensor(np.stack([c.value for c in cands]), dtype=torch.float32, device=device)
            losses = objective(z.view(k, *shape)).double().cpu().numpy()
            for c, value in zip(cands, losses):
                optimizer.tell(c, float(value) if np.isfinite(value) else 1e30)
            j = int(np.argmin(losses))
            if losses[j] < best[0]:
                best = (float(losses[j]), cands[j].value.copy())
            done += k
    rec = optimizer.provide_recommendation().value
    with torch.no_grad():
        rec_loss = float(objective(torch.tensor(rec, dtype=torch.float32, device=device).view(1, *shape))[0])
    return (rec_loss, rec) if rec_loss <= best[0] else best


def _adam(objective, shape: tuple[int, int], params: GGLParams, seed: int, device) -> tuple[float, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, *shape, generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=params.lr, betas=(0.9, 0.999))
    best = (float("inf"), z.detach().clone())
    for _ in range(params.iterations):
        opt.zero_grad(set_to_none=True)
        loss = objective(z)[0]
        if not torch.isfinite(loss):
            break
        if float(loss.detach()) < best[0]:
            best = (float(loss.detach()), z.detach().clone())
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(objective(z)[0])
    if np.isfinite(final) and final < best[0]:
        best = (final, z.detach().clone())
    return best[0], best[1].cpu().numpy().ravel()


@register_attack("ggl", params=GGLParams, adaptive=True,
                 paper="Li et al., Auditing Privacy Defenses in Federated Learning via Generative Gradient "
                       "Leakage, CVPR 2022")
def ggl(obs: Observation, params: GGLParams, ctx: AttackContext) -> Reconstruction:
    gen, meta = load_generator(params.generator, "ggl.generator", ctx.device)
    for p in gen.parameters():
        p.requires_grad_(False)
    n = num_images(obs)
    labels, method = recover_labels(obs, n, ctx.labels)
    labels = labels.to(ctx.device)
    objective = _objective(obs, params, ctx, gen, meta, labels)
    shape = (n, int(meta["latent_dim"]))
    search = _cmaes if params.optimizer == "cmaes" else _adam
    best: tuple[float, np.ndarray] | None = None
    for r in range(params.restarts):
        loss, z = search(objective, shape, params, ctx.seed + 7919 * r, ctx.device)
        if np.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, z)
    if best is None:
        raise FloatingPointError("every GGL search diverged")
    z = torch.tensor(best[1], dtype=torch.float32, device=ctx.device).view(1, *shape)
    with torch.no_grad():
        images = generated_images(gen, meta, z, obs)[0]
    evaluations = params.budget if params.optimizer == "cmaes" else params.iterations
    return Reconstruction(images=images, labels=labels,
                          info={"loss": best[0], "label_method": method, "optimizer": params.optimizer,
                                "evaluations": evaluations * params.restarts, "latent_dim": shape[1]})
