"""The attacker's variables and the optimizers that drive them, over a Matching problem.

Restarts are a batch dimension: Adam (elementwise) runs all of them at once through vmap;
L-BFGS couples its coordinates, so its restarts run one after another. Label candidates
(multisets and their arrangements over local steps) ride on the same dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from scipy.optimize import linear_sum_assignment

from fedattack.attacks.engine import (Matching, Params, RunningStatistics, batch_norm_colour, epoch_of_step,
                                      finite_or_inf, leaked_colour, restart_losses, schedule)
from fedattack.threat import DataSpec, Protocol


@dataclass(repr=False)  # reprs would print every tensor
class Unknowns:
    """The attacker's variables for R restarts: images (R, [E,] N, C, H, W) and either label
    logits (R, N, classes), optimized too (DLG), or fixed labels (R, N), one arrangement of
    the recovered labels per restart, or (R, E, N) with per-epoch copies, one arrangement per
    copy (`per_epoch_labels`). `orders` (R, E, N), with fixed labels: the client
    reshuffled its samples every local epoch, and slot j of epoch e trained on dummy sample
    orders[r, e, j] (see `epoch_batches`)."""

    x: torch.Tensor
    y_logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    orders: torch.Tensor | None = None

    def variables(self) -> list[torch.Tensor]:
        return [self.x] if self.y_logits is None else [self.x, self.y_logits]

    def final_labels(self, r: int) -> torch.Tensor:
        """Restart r's labels, per output image (per-epoch copies: the first copy's, to which
        `consensus` aligns the others)."""
        if self.y_logits is not None:
            return self.y_logits[r].detach().argmax(-1)
        return self.labels[r][0] if self.labels[r].dim() == 2 else self.labels[r]


def arrangements(labels: torch.Tensor, protocol: Protocol, k: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Up to k distinct arrangements of a label multiset over the dummy samples, the given
    order first. Over several local steps it matters which labels share a step (the model
    moves between steps); one step has a single grouping."""
    steps = schedule(len(labels), protocol.batch_size, protocol.local_steps, protocol.local_epochs)
    out, seen = [labels], {arrangement_key(labels, steps)}
    for _ in range(20 * k):
        if len(out) >= k:
            break
        cand = labels[torch.randperm(len(labels), generator=gen)]
        if arrangement_key(cand, steps) not in seen:
            seen.add(arrangement_key(cand, steps))
            out.append(cand)
    return out


def arrangement_key(labels: torch.Tensor, steps: list[list[int]], orders: torch.Tensor | None = None) -> tuple:
    """What tells two arrangements of labels apart: the sorted labels of every local step.
    With per-epoch `orders` (E, N), `steps` are one epoch's batches and every epoch counts."""
    if orders is not None:
        return tuple(arrangement_key(labels[order], steps) for order in orders)
    return tuple(tuple(sorted(labels[idx].tolist())) for idx in steps)


def epoch_batches(n: int, protocol: Protocol) -> list[list[int]] | None:
    """The batches of one local epoch where the client ran several, each reshuffled (its
    data loader draws a new order every epoch); None where one arrangement covers the run
    (one epoch, or a number of steps). The attacker cannot know the orders, and with more
    than one epoch they matter: a sample's gradient is taken where the model stands when
    its batch comes, so the same images in one fixed order need not reproduce the update."""
    epochs = epoch_of_step(n, protocol)
    if max(epochs) == 0:
        return None
    steps = schedule(n, protocol.batch_size, protocol.local_steps, protocol.local_epochs)
    return [idx for idx, e in zip(steps, epochs) if e == 0]


def random_orders(k: int, epochs: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """k random per-epoch orders (k, epochs, n); the first epoch's is the identity (dummy
    samples are numbered by the slot they take in it)."""
    rest = [torch.stack([torch.randperm(n, generator=gen) for _ in range(epochs - 1)]) for _ in range(k)]
    return torch.cat([torch.arange(n).expand(k, 1, n), torch.stack(rest)], dim=1)


def per_epoch_labels(labels: torch.Tensor, epochs: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k candidate arrangements (k, epochs, N) of a label multiset (N,) for per-epoch copies of
    the images (the FedAvg attack): each epoch arranges the multiset over its batches in its own
    order, as the client's reshuffled epochs did; the first candidate arranges every epoch alike."""
    orders = random_orders(k, epochs, len(labels), gen)
    orders[0] = torch.arange(len(labels))
    return labels[orders]


def neighbours(labels: torch.Tensor, steps: list[list[int]], classes: int) -> list[tuple[torch.Tensor, list[int]]]:
    """The label candidates one move away, distinct arrangements only, in a fixed order, each
    with the order in which to carry the current images over: swaps (two samples of different
    labels that trained in different local steps trade places, images and labels together;
    over several steps the grouping matters) and relabels (one sample takes another class:
    the count estimate behind the multiset can be off by one)."""
    where = [{s for s, idx in enumerate(steps) if i in idx} for i in range(len(labels))]
    out, seen = [], {arrangement_key(labels, steps)}
    identity = list(range(len(labels)))

    def add(cand: torch.Tensor, order: list[int]) -> None:
        key = arrangement_key(cand, steps)
        if key not in seen:
            seen.add(key)
            out.append((cand, order))

    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            if labels[a] != labels[b] and where[a] != where[b]:
                order = identity.copy()
                order[a], order[b] = b, a
                add(labels[order], order)
    for cand in relabels(labels, classes):
        add(cand, identity)
    return out


def relabels(labels: torch.Tensor, classes: int) -> list[torch.Tensor]:
    """The label vectors one relabelled sample away (a count estimate can be off by one)."""
    out = []
    for a in range(len(labels)):
        for c in range(classes):
            if c != int(labels[a]):
                cand = labels.clone()
                cand[a] = c
                out.append(cand)
    return out


def reshuffles(labels: torch.Tensor, orders: torch.Tensor, batches: list[list[int]], classes: int
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (labels, orders) candidates one move away over reshuffled epochs, distinct
    arrangements only, in a fixed order: two slots of one epoch's order, in different batches
    and holding samples of different labels, trade samples (the images stay: only what
    trained together changes), or one sample takes another class."""
    batch_of = {i: b for b, idx in enumerate(batches) for i in idx}
    out, seen = [], {arrangement_key(labels, batches, orders)}

    def add(cand: torch.Tensor, order: torch.Tensor) -> None:
        key = arrangement_key(cand, batches, order)
        if key not in seen:
            seen.add(key)
            out.append((cand, order))

    n = orders.shape[1]
    for e in range(orders.shape[0]):
        for a in range(n):
            for b in range(a + 1, n):
                if batch_of[a] != batch_of[b] and labels[orders[e, a]] != labels[orders[e, b]]:
                    order = orders.clone()
                    order[e, a], order[e, b] = orders[e, b], orders[e, a]
                    add(labels, order)
    for cand in relabels(labels, classes):
        add(cand, orders)
    return out


def label_plan(hypotheses: list[torch.Tensor], protocol: Protocol, k: int, gen: torch.Generator) -> torch.Tensor:
    """Up to k distinct fixed-label candidates (K, N): the candidate multisets (most
    plausible first) and their arrangements over steps, in order of combined rank."""
    per = [arrangements(h.cpu(), protocol, k, gen) for h in hypotheses]
    pairs = sorted(((i + j, i, j) for i, arr in enumerate(per) for j in range(len(arr))))
    return torch.stack([per[i][j] for _, i, j in pairs[:k]])


def init_images(how: str, shape: tuple[int, ...], data: DataSpec, gen: torch.Generator,
                centre: torch.Tensor | None = None) -> torch.Tensor:
    """Starting images of `shape` (..., C, H, W) in model-input space.

    randn: N(0, 1) in model-input units (Geiping et al.'s and DLG's start); uniform: uniform
    pixels in [0, 1]; mean: the dataset mean with a little noise (std 0.1 in model-input
    units, around `centre` where one is given), so that directions the update does not
    constrain start, and stay, smooth;
    leaked-mean: randn around `centre`, each channel's mean as the update gives it away
    (`engine.leaked_colour`), or plain randn where it gives none away."""
    if how in ("randn", "leaked-mean"):
        x = torch.randn(shape, generator=gen)
        return x if how == "randn" or centre is None else x + centre.view(-1, 1, 1).to(x)
    if how == "uniform":
        return data.normalize(torch.rand(shape, generator=gen).reshape(-1, *shape[-3:])).reshape(shape)
    if how == "mean":
        x = 0.1 * torch.randn(shape, generator=gen)
        return x if centre is None else x + centre.view(-1, 1, 1).to(x)
    raise ValueError(f"unknown image initialization '{how}'")


INITS = ("randn", "uniform", "mean", "leaked-mean")


def start_centre(init: str, target: Params, data: DataSpec, stats: RunningStatistics | None = None
                 ) -> torch.Tensor | None:
    """The per-channel centre an `init` start is drawn around: for `leaked-mean`, the colour the
    update's first layer leaks (`engine.leaked_colour`) or, where it leaks none (BatchNorm right
    after it), the colour the returned running statistics give (`engine.batch_norm_colour`, with
    `stats`); else None."""
    if init != "leaked-mean":
        return None
    colour = leaked_colour(target, data)
    return colour if colour is not None or stats is None else batch_norm_colour(stats, data)


def observed_stats(problem: Matching) -> RunningStatistics | None:
    """The RunningStatistics a matching problem matches, if any."""
    return next((fn for _, fn in problem.observed if isinstance(fn, RunningStatistics)), None)


def grey_centres(data: DataSpec, k: int) -> list[torch.Tensor]:
    """k flat grey levels evenly over [0.2, 0.8] of the pixel range (one level: 0.5), each as
    the per-channel centre in model-input units that `init_images` draws a start around."""
    levels = [0.5] if k == 1 else [0.2 + 0.6 * i / (k - 1) for i in range(k)]
    return [data.normalize(torch.full((1, data.shape[0], 1, 1), v)).view(-1) for v in levels]


def centre_info(centre: torch.Tensor | None) -> list[float] | None:
    """`centre` as an attack's info records it (`init_colour`)."""
    return None if centre is None else [round(float(v), 4) for v in centre]


def init_unknowns(data: DataSpec, n: int, restarts: int, labels: torch.Tensor | None, gen: torch.Generator,
                  device: torch.device, init: str = "randn", copies: int = 0,
                  size: tuple[int, int] | None = None, centre: torch.Tensor | None = None) -> Unknowns:
    """Random images for R restarts, and either fixed labels or random label logits.

    `labels`: one multiset (N,), shared by all restarts, or per-candidate labels (K, N)
    assigned to restarts in turn (different image initializations tell repeats apart).
    `copies` > 0: that many copies of the images per restart (one per local epoch). `size`:
    the images' (H, W) when they are optimized at a lower resolution (see `Resized`). `centre`:
    the per-channel mean the `leaked-mean` start is drawn around (see `init_images`)."""
    lead = (restarts, copies) if copies else (restarts,)
    shape = (data.shape[0], *(size or data.shape[1:]))
    x = init_images(init, (*lead, n, *shape), data, gen, centre).to(device).requires_grad_(True)
    if labels is not None:
        plan = labels[None] if labels.ndim == 1 else labels
        return Unknowns(x=x, labels=plan[torch.arange(restarts) % len(plan)].to(device))
    y = torch.randn((restarts, n, data.num_classes), generator=gen).to(device).requires_grad_(True)
    return Unknowns(x=x, y_logits=y)


def coarse_to_fine(shape: tuple[int, int, int], levels: int) -> list[tuple[int, int]]:
    """Image sizes from the coarsest to the full one, halving per level: levels=3 on 32x32
    gives 8x8, 16x16, 32x32."""
    h, w = shape[-2:]
    return [(max(1, -(-h // 2**k)), max(1, -(-w // 2**k))) for k in reversed(range(max(1, levels)))]


def rescaled(u: Unknowns, size: tuple[int, int]) -> Unknowns:
    """u with its images resized to `size`, as fresh leaves."""
    return Unknowns(x=resize(u.x.detach(), size).clone().requires_grad_(True), y_logits=u.y_logits, labels=u.labels,
                    orders=u.orders)


def subset(u: Unknowns, keep: torch.Tensor) -> Unknowns:
    """The restarts `keep` of u, as fresh leaves."""
    return Unknowns(x=u.x.detach()[keep].clone().requires_grad_(True),
                    y_logits=None if u.y_logits is None else u.y_logits.detach()[keep].clone().requires_grad_(True),
                    labels=None if u.labels is None else u.labels[keep],
                    orders=None if u.orders is None else u.orders[keep])


def batched_objective(problem: Matching, u: Unknowns, which: str = "objective") -> torch.Tensor:
    """Per-restart losses (R,) for all restarts at once."""
    return restart_losses(*per_restart(getattr(problem, which), u, u.x))


def per_restart(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], u: Unknowns, x: torch.Tensor
                ) -> tuple[Callable[..., torch.Tensor], torch.Tensor, torch.Tensor]:
    """fn(images, labels) as one restart's function of the tensors `restart_losses` batches
    (images x first): per-epoch copies share their labels (tiled over the epoch axis) unless
    each copy has its own arrangement (labels (R, E, N)); per-epoch orders index the images and
    labels each epoch trains on; label logits pass through a softmax."""
    if u.orders is not None:
        return (lambda xi, yi, oi: fn(xi[oi], yi[oi])), x, u.labels, u.orders
    copies = u.x.shape[1] if u.x.dim() == 6 else 0
    own = u.labels is not None and u.labels.dim() == 3  # each copy its own arrangement

    def tiled(y: torch.Tensor) -> torch.Tensor:
        return y.unsqueeze(0).expand(copies, *y.shape) if copies and not own else y

    if u.y_logits is None:
        return (lambda xi, yi: fn(xi, tiled(yi))), x, u.labels
    return (lambda xi, yl: fn(xi, tiled(torch.softmax(yl, dim=-1)))), x, u.y_logits


@dataclass(repr=False)  # reprs would print every tensor
class Resized:
    """A matching problem whose images are optimized at a lower resolution: the variable is
    (..., C, h, w) and the problem sees it upsampled (bilinear) to its own size. Coarse to fine
    (see `upsample`): the low frequencies, brightness and colour first, where the update
    constrains few unknowns strongly, then the detail."""

    problem: Matching
    size: tuple[int, int]  # the problem's image size (H, W)

    def mismatch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.problem.mismatch(resize(x, self.size), y)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.problem.objective(resize(x, self.size), y)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images (..., C, H, W) resized to `size` (bilinear; antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    shrink = size[0] < x.shape[-2]
    out = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(*lead, *out.shape[-3:])


@dataclass
class AdamSchedule:
    iterations: int
    lr: float = 0.1
    signed: bool = True  # step on the sign of the gradient (Geiping et al.)
    boxed: bool = True  # keep pixels in [0, 1]
    decay: bool = True  # lr x 0.1 at 3/8, 5/8, 7/8 of the iterations
    prior_decay: bool = False  # the priors' weights decay with the step size (strong early, weak late)
    balanced: bool = False  # prior weights relative to the mismatch: w = the priors' share of the gradient norm at the start
    rebalance: bool = True  # balanced anew where each run starts (False: at the problem's first balanced run only)
    soft_pool: float = 0.0  # start temperature of the model's soft max-pools (pooling.py), annealed; 0: hard


def soft_temperature(start: float, it: int, iterations: int, share: float = 0.5) -> float:
    """The max-pools' temperature (pooling.py) at iteration `it` of a run: `start`, falling
    linearly to 0 at `share` of the iterations, and 0 from there on (the client's own model)."""
    if start <= 0:
        return 0.0
    return start * max(0.0, 1.0 - it / max(1.0, share * iterations))


def run_adam(problem: Matching, u: Unknowns, sched: AdamSchedule, bounds: tuple[torch.Tensor, torch.Tensor],
             on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Optimize all restarts jointly; returns the final per-restart mismatch (R,), on the
    client's own model (max-pools hard, whatever `soft_pool` softened on the way)."""
    target = problem.problem if isinstance(problem, Resized) else problem
    soften = target.trial.model.soften if sched.soft_pool > 0 else (lambda t: None)
    try:
        _run_adam(problem, target, u, sched, bounds, on_step, soften)
    finally:
        soften(0.0)
    with torch.no_grad():
        return batched_objective(problem, u, "mismatch").detach()


def _run_adam(problem: Matching | Resized, target: Matching, u: Unknowns, sched: AdamSchedule,
              bounds: tuple[torch.Tensor, torch.Tensor], on_step: Callable[[int], None] | None,
              soften: Callable[[float], None]) -> None:
    # the priors' balance below is measured where the run starts, on the softened model
    soften(soft_temperature(sched.soft_pool, 0, sched.iterations))
    opt = torch.optim.Adam(u.variables(), lr=sched.lr)
    marks = [int(sched.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if sched.decay else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
    lo, hi = bounds
    original = target.prior_scale
    # Balanced at the start of every run by default, a continued one included: a run that continues
    # a label screen weighs the priors against the mismatch where it starts, which has shrunk as the
    # images converged (on a sigmoid LeNet 20 to 1000 times over the phases of a screened run), so
    # the priors weigh less in the later phases. Fixing the weight where the first run starts
    # (`rebalance=False`) scored lower on a sigmoid LeNet over 8 images in 4 steps (the `realistic`
    # cases) and higher on the quickstart CNN over 4 images in 2 steps; `audit.calibrate` chooses.
    start_scale = original
    if sched.balanced and target.priors:
        if sched.rebalance or target.balance is None:
            target.balance = _balance(problem, u)
        start_scale = original * target.balance
    target.prior_scale = start_scale
    for it in range(sched.iterations):
        soften(soft_temperature(sched.soft_pool, it, sched.iterations))
        if sched.prior_decay:
            target.prior_scale = start_scale * 0.1 ** sum(it >= m for m in marks)
        opt.zero_grad(set_to_none=True)
        losses = batched_objective(problem, u)
        losses.sum().backward(inputs=u.variables())
        if sched.signed:
            for t in u.variables():
                t.grad.sign_()
        opt.step()
        scheduler.step()
        if sched.boxed:
            with torch.no_grad():
                u.x.clamp_(min=lo, max=hi)
        if on_step is not None:
            on_step(it)
    target.prior_scale = original


def _balance(problem: Matching | Resized, u: Unknowns) -> float:
    """The factor on the current prior scale at which the priors' gradient norm is their weight
    times the mismatch's (at the starting point): weights then mean the same on every model,
    whatever the scale of its gradients with respect to the input."""
    x = u.x.detach().requires_grad_(True)
    target = problem.problem if isinstance(problem, Resized) else problem
    frozen = Unknowns(x=u.x, labels=u.labels, orders=u.orders,
                      y_logits=None if u.y_logits is None else u.y_logits.detach())
    mismatch = restart_losses(*per_restart(problem.mismatch, frozen, x)).sum()
    g_m = torch.autograd.grad(mismatch, x)[0].norm()
    weights = sum(w for w, _ in target.priors)
    x2 = u.x.detach().requires_grad_(True)
    view = x2 if not isinstance(problem, Resized) else resize(x2, problem.size)
    prior = sum(target.prior(view[r]) for r in range(view.shape[0]))
    g_p = torch.autograd.grad(prior, x2)[0].norm()
    if not torch.isfinite(g_m) or not torch.isfinite(g_p) or g_p == 0 or g_m == 0:
        return 1.0
    return float(weights * g_m / g_p)


def descend(problem: Matching | Resized, x: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor,
            batches: list[list[int]], classes: int, evaluations: int, gen: torch.Generator, chunk: int = 64
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Greedy descent over reshuffled-epoch arrangements with the images x (N, C, H, W) held
    fixed: a candidate one move away (`reshuffles`) costs one replay of the client's training
    and no optimization, and the search moves to the best of them while it lowers the
    mismatch, until it has spent `evaluations` replays (where there are more candidates than
    that left, a sample drawn by `gen`). Where the labels dominate the update (a sigmoid
    LeNet's), the images matter little and the moves regroup the labels of each epoch."""

    def mismatch(cands: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(cands), chunk):
                part = cands[i:i + chunk]
                u = Unknowns(x=x.expand(len(part), *x.shape), labels=torch.stack([c for c, _ in part]).to(x.device),
                             orders=torch.stack([o for _, o in part]).to(x.device))
                out.append(finite_or_inf(batched_objective(problem, u, "mismatch").cpu()))
        return torch.cat(out)

    best = float(mismatch([(labels, orders)])[0])
    while evaluations > 0:
        cands = reshuffles(labels, orders, batches, classes)
        if not cands:
            break
        if len(cands) > evaluations:
            cands = [cands[int(j)] for j in torch.randperm(len(cands), generator=gen)[:evaluations]]
        evaluations -= len(cands)
        m = mismatch(cands)
        j = int(torch.argmin(m))
        if float(m[j]) >= best:
            break
        (labels, orders), best = cands[j], float(m[j])
    return labels, orders, best


def screen_labels(problem: Matching | Resized, plan: torch.Tensor, keep: int, sched: AdamSchedule, *,
                  data: DataSpec, protocol: Protocol, gen: torch.Generator, device: torch.device, init: str,
                  size: tuple[int, int] | None, bounds: tuple[torch.Tensor, torch.Tensor], rounds: int = 4,
                  moves: int | None = None, orders: torch.Tensor | None = None,
                  centre: torch.Tensor | None = None) -> Unknowns:
    """Label candidates screened by a short run each, then a local search over them.

    Every candidate of `plan` (K, N) runs `sched` from its own start. The candidates are a
    sample: over several local steps the grouping of labels into steps matters and there are
    many groupings, and the multisets are count estimates. With `orders` (K, E, N) the client
    reshuffled every epoch (`epoch_batches`) and each candidate also carries one order per
    epoch. Then, for `rounds` rounds, the candidates one move away from the best so far
    (`neighbours`: a swap between steps or one relabelled sample; over reshuffled epochs
    `reshuffles`: a swap within one epoch's order or a relabel; at most `moves` of them,
    default K, drawn by `gen`) continue from the best's images, carried along with their
    labels, for another `sched`; the search moves to the best while it lowers the mismatch.
    The K/8 with the lowest mismatch then run three times as long again, and the `keep`
    lowest after that are returned, to be optimized further."""
    n = plan.shape[1]
    batches = epoch_batches(n, protocol) if orders is not None else None
    steps = batches or schedule(n, protocol.batch_size, protocol.local_steps, protocol.local_epochs)
    orders = None if batches is None else orders

    def key(k: int, labels: torch.Tensor, order: torch.Tensor | None) -> tuple:
        return arrangement_key(labels[k], steps, None if order is None else order[k])

    def near(labels: torch.Tensor, order: torch.Tensor | None) -> list:
        if order is None:
            return [(c, None, carry) for c, carry in neighbours(labels, steps, data.num_classes)]
        return [(c, o, list(range(n))) for c, o in reshuffles(labels, order, steps, data.num_classes)]

    u = init_unknowns(data, n, len(plan), plan, gen, device, init, size=size, centre=centre)
    u.orders = None if orders is None else orders.to(device)
    mismatch = finite_or_inf(run_adam(problem, u, sched, bounds).cpu())
    pool = [(u.x.detach(), plan, orders, mismatch)]
    seen = {key(k, plan, orders) for k in range(len(plan))}
    i = int(torch.argmin(mismatch))
    best = (plan[i], None if orders is None else orders[i])
    best_x, best_m = u.x.detach()[i], float(mismatch[i])
    for _ in range(rounds):
        descended = []
        if orders is not None:  # first the cheap moves at the best's images, then the short runs
            labels, order, _ = descend(problem, best_x, *best, steps, data.num_classes,
                                       evaluations=len(plan) * sched.iterations, gen=gen)
            best, descended = (labels, order), [(labels, order, list(range(n)))]
        cands = [c for c in descended + near(*best) if arrangement_key(c[0], steps, c[1]) not in seen]
        if not cands:
            break
        if len(cands) > (moves or len(plan)):
            cands = cands[:len(descended)] + [cands[len(descended) + int(j)] for j in torch.randperm(
                len(cands) - len(descended), generator=gen)[: (moves or len(plan)) - len(descended)]]
        labels = torch.stack([c for c, _, _ in cands])
        order = None if orders is None else torch.stack([o for _, o, _ in cands])
        seen.update(key(k, labels, order) for k in range(len(cands)))
        v = Unknowns(x=torch.stack([best_x[carry] for _, _, carry in cands]).clone().requires_grad_(True),
                     labels=labels.to(device), orders=None if order is None else order.to(device))
        mismatch = finite_or_inf(run_adam(problem, v, sched, bounds).cpu())
        pool.append((v.x.detach(), labels, order, mismatch))
        j = int(torch.argmin(mismatch))
        if float(mismatch[j]) >= best_m:
            break
        best = (labels[j], None if order is None else order[j])
        best_x, best_m = v.x.detach()[j], float(mismatch[j])
    x, labels, mismatch = (torch.cat([part[i] for part in pool]) for i in (0, 1, 3))
    order = None if orders is None else torch.cat([part[2] for part in pool])
    finalists = torch.argsort(mismatch)[: max(keep, len(plan) // 8)]
    u = Unknowns(x=x[finalists].clone().requires_grad_(True), labels=labels[finalists].to(device),
                 orders=None if order is None else order[finalists].to(device))
    if len(finalists) > keep:  # a longer look at the closest candidates before choosing
        longer = replace(sched, iterations=3 * sched.iterations, decay=False, prior_decay=False)
        mismatch = finite_or_inf(run_adam(problem, u, longer, bounds).cpu())
        u = subset(u, torch.argsort(mismatch)[:keep])
    return u


STALL_EVALS = 500  # L-BFGS: a start whose mismatch fell by less than STALL_GAIN over this many evaluations ...
STALL_GAIN = 0.1  # ... (or whose step L-BFGS's own tolerances ended) while above CONVERGED of its start has stalled
CONVERGED = 1e-4


def run_lbfgs(problem: Matching, u: Unknowns, iterations: int, lr: float, max_iter: int = 1, tol: float = 0.0,
              line_search: str | None = None, tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
              fresh: Callable[[], Unknowns] | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """L-BFGS per restart (as DLG): `iterations` steps of up to `max_iter` evaluations each.
    Returns the final per-restart mismatch (R,), inf where it diverged from the start, and
    the steps each restart took: all of them, or fewer where the mismatch fell to `tol` or a
    step diverged. Each restart ends on the best iterate it saw: L-BFGS without a line
    search can leave a near-perfect match and wander off (or blow up) once the loss is tiny.

    torch's L-BFGS sizes its first step as the raw gradient when that gradient's L1 norm is
    below 1, after which it is scale-invariant; the objective is therefore scaled so that its
    initial gradient has L1 norm >= 1. The scale is a positive constant and leaves the
    minimizer unchanged. `line_search="strong_wolfe"` uses torch's line search instead of
    fixed steps of `lr`. `tolerance_grad` and `tolerance_change` end a step's inner
    evaluations early, as torch's defaults (which DLG's code runs) do: once the match is
    converged, a step costs one evaluation instead of `max_iter`.

    Stalled starts (with `fresh`, which draws a new start): in DLG's setting one random start in
    several sits on a plateau from its first steps (a sigmoid LeNet's mismatch falls by a few
    per cent per 25 steps of 20 evaluations, or not at all), where a start that matches falls a
    hundredfold in 10 steps. A start whose mismatch fell by less than STALL_GAIN over its last
    STALL_EVALS evaluations, or whose last step L-BFGS ended after one evaluation of `max_iter`
    (its tolerances say it has converged), while still above CONVERGED of its starting value,
    is replaced by a fresh one within the same budget of steps; the best iterate over all
    starts is kept. Counted in evaluations, the rule leaves alone a run of one evaluation per
    step (`max_iter=1`), whose progress per step is small. Returns the starts each restart used
    as well.
    """
    final = torch.full((u.x.shape[0],), float("inf"))
    taken: list[int] = []
    starts: list[int] = []
    for r in range(u.x.shape[0]):
        xr = u.x[r].detach().clone().requires_grad_(True)
        yr = None if u.y_logits is None else u.y_logits[r].detach().clone().requires_grad_(True)
        variables = [xr] if yr is None else [xr, yr]

        def labels() -> torch.Tensor:
            return u.labels[r] if yr is None else torch.softmax(yr, dim=-1)

        first = torch.autograd.grad(problem.objective(xr, labels()), variables)
        l1 = float(sum(g.abs().sum() for g in first))
        scale = 1.0 / l1 if 0 < l1 < 1 else 1.0

        def optimizer() -> torch.optim.LBFGS:
            return torch.optim.LBFGS(variables, lr=lr, max_iter=max_iter, history_size=100,
                                     tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                     line_search_fn=line_search)

        opt = optimizer()

        evals = [0]

        def closure() -> torch.Tensor:
            evals[0] += 1
            opt.zero_grad()
            loss = scale * problem.objective(xr, labels())
            loss.backward(inputs=variables)
            return loss

        steps, best, best_at = 0, math.inf, [v.detach().clone() for v in variables]
        losses: list[tuple[int, float]] = []  # this start's (evaluations so far, loss), one per step
        used, improved, blew_up = 1, False, False
        while steps < iterations:
            before = [v.detach().clone() for v in variables]
            loss = float(opt.step(closure).detach())  # the objective at `before`
            if math.isfinite(loss) and loss < best:
                improved = improved or steps > 0
                best, best_at = loss, before
            if not math.isfinite(loss) or (tol and loss / scale <= tol):
                blew_up = not math.isfinite(loss)
                break
            steps += 1
            losses.append((evals[0], loss))
            if fresh is not None and steps < iterations and stalled(losses, max_iter):
                new = fresh()
                with torch.no_grad():
                    xr.copy_(new.x[0])
                    if yr is not None:
                        yr.copy_(new.y_logits[0])
                opt, losses, used = optimizer(), [], used + 1
        taken.append(steps)
        starts.append(used)
        with torch.no_grad():
            last = float(scale * problem.objective(xr, labels())) if steps == iterations else math.inf
            if not last < best:  # the best iterate seen (L-BFGS without line search can leave it)
                for v, b in zip(variables, best_at):
                    v.copy_(b)
            u.x.data[r] = xr.detach()
            if yr is not None:
                u.y_logits.data[r] = yr.detach()
            value = problem.mismatch(xr, labels()).detach().cpu()
        # a start that blew up before any step improved on it diverged from the start
        final[r] = value if torch.isfinite(value) and (improved or not blew_up) else float("inf")
    return final, taken, starts


def stalled(losses: list[tuple[int, float]], max_iter: int) -> bool:
    """Whether an L-BFGS start, its (evaluations so far, loss) per step, has stalled short of a
    match (see run_lbfgs)."""
    if len(losses) < 2 or losses[-1][1] <= CONVERGED * losses[0][1]:
        return False
    evals, loss = losses[-1]
    if max_iter > 1 and evals - losses[-2][0] == 1:  # L-BFGS's tolerances ended the step at once
        return True
    earlier = [old for e, old in losses if e <= evals - STALL_EVALS]
    return bool(earlier) and loss > (1 - STALL_GAIN) * earlier[-1]


def best_restart(final: torch.Tensor) -> int:
    if not torch.isfinite(final).any():
        raise FloatingPointError("every restart diverged (try a smaller lr)")
    return int(torch.argmin(finite_or_inf(final.cpu())))


def align(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """images (M, C, H, W) reordered to match reference (M, C, H, W) one to one, by optimal
    assignment on mean squared difference (dummy samples come out in any order)."""
    cost = ((images[:, None] - reference[None]) ** 2).flatten(2).mean(-1)  # (M images, M reference)
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    order = torch.empty(len(cols), dtype=torch.long)
    order[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return images[order.to(images.device)]


def shrink(images: torch.Tensor, amount: float, data: DataSpec) -> torch.Tensor:
    """Images (N, C, H, W, model-input units) pulled toward their own mean grey: each pixel
    keeps 1 - `amount` of its deviation from its image's mean pixel value (0: unchanged, 1: a
    flat grey image). Where a reconstruction's detail is mostly wrong, as on updates that hold
    fewer numbers than the pixels they hide, its brightness is the part that is right:
    shrinkage toward it is the squared-error estimate's answer to uncertain detail (James and
    Stein's, in spirit), and calibration picks the amount on the server's own simulated
    clients. Grey, not each channel's mean: a flat grey image is the baseline every score is
    set against (fedattack.metrics.score.flat_baseline), and a flat colour would beat it on
    colour alone."""
    if not amount:
        return images
    pixels = data.to_pixels(images)
    grey = pixels.mean(dim=(-3, -2, -1), keepdim=True)
    return data.normalize(grey + (1.0 - amount) * (pixels - grey))


def consensus(images: torch.Tensor, reference: int = 0) -> torch.Tensor:
    """The mean of several reconstructions of the same samples (K, M, C, H, W), each aligned
    to the reference one first. What the update determines agrees across reconstructions and
    survives the mean; what it leaves open differs and averages out toward a smooth image
    (Dimitrov et al. average their per-epoch reconstructions the same way)."""
    ref = images[reference]
    return torch.stack([ref if k == reference else align(images[k], ref) for k in range(len(images))]).mean(0)
