"""Inverting Gradients (Geiping et al., NeurIPS 2020), single- and multi-step.

Images are optimized so that the update they would produce points the same way as the
observed one, under a total-variation prior, with signed Adam steps, a step-size decay at
3/8, 5/8 and 7/8 of the run and pixels boxed to [0, 1]. The prior's weight is relative
(`balanced`, the default): `tv` is the share of the mismatch's gradient norm with respect to
the images that the prior's gradient has at the start, so one weight means the same on a
sigmoid LeNet, whose input gradients are tiny, and on a ReLU CNN, whose are not
(`balanced=false`: the paper's absolute weight). A run that continues a label screen is
balanced again where it starts, against a mismatch that has shrunk: the prior weighs less
there (`optimize.run_adam` says why; `rebalance=false` keeps the weight of the first start,
and `audit.calibrate` tries it). With several local steps or epochs
the client's local training is unrolled on the dummy data (the paper's FedAvg attack); one
step is gradient matching. With `audit.adaptive`, the known defenses are modelled on the
simulated update.

Labels are recovered first (`audit.labels`). A count estimate leaves some doubt about the
multiset, and over several steps the grouping of labels into steps matters too: a wrong
grouping leaves even the true images unable to reproduce the update. The attack therefore
screens up to `candidates` (multiset, grouping) pairs, most plausible first, for 1/40 of
the iterations each (and no more candidates than iterations: a run of a few iterations is a
quick look, not a search), searches from the best of them over the candidates one swap or one
relabelled sample away (`label_search` rounds), gives the closest eighth a longer look, and
continues the `restarts` with the lowest gradient mismatch. Over several local epochs, each
reshuffled by the client, every candidate also holds one order per epoch, and the search
regroups each epoch's batches as well. All restarts run as one
vmapped batch; the output is the restart with the lowest final mismatch, or
(`output=consensus`) the mean of all restarts aligned to it. By default one start runs 2000
iterations: at the same number of gradient evaluations, one long run beat two restarts of 1000
on three of the four cases of the `restarts` benchmark, by up to several dB, and lost a little on
the fourth (a start that converges further counted for more than a second start); on a GPU,
where restarts run side by side, raise `restarts` as well.

Start: Geiping et al. start from N(0, 1) in model-input units, around the dataset's mean
colour. On a ReLU CNN the run keeps the colour it starts with: the first layer, where colour
lives, holds a tiny share of the update's norm, so the global cosine barely sees it, and a
near-white photo came out lime green. The default start (`init=leaked-mean`) is the same noise
around the client's mean colour as the first layer's gradient gives it away
(`engine.leaked_colour`: dW_k / db_k of each unit of a layer with a bias averages the input
patches), or, with BatchNorm right after that layer, as the running means the client returned give
it away (`engine.batch_norm_colour`). `info["init_colour"]` says which. Where nothing gives it away
(no bias, BatchNorm whose statistics stay with the client, no unit's guess within the pixel range),
noise around the dataset mean stays noise: the update of a BatchNorm model hides the image's
contrast entirely and its colour but for the zero padding at the border. There the run is split
into `greys` flat grey starts (20% to 80% of the pixel range, noise of std 0.1), each of half the
iterations, and the lowest loss is kept (`info["grey_starts"]`):
on the ConvNet, one photo, 16.1 dB against 10.7 from noise over eight victims (the `grey_starts`
benchmark), where the border told the right grey after 1000 iterations, not after 100.

BatchNorm statistics: a client that returns its BatchNorm running statistics with its weights (a
Flower app that sends its whole state_dict) gives away every layer's batch mean and variance,
averaged over its steps; they are matched beside the update at weight `bn_stats`
(`engine.RunningStatistics`; docs/attacks.md). On the ConvNet, one photo in one step, 15.7 dB
without them and 20.5 with (the `bn_stats` benchmark).

Max-pooling: a max-pool's gradient reaches only each window's winning position, so on a
max-pooling CNN (Flower's quickstart CNN, the ConvNet) a run that starts with the wrong winners
moves only the pixels behind them and settles in a local minimum. Each run therefore starts on a
softened copy of the model, each window's softmax-weighted mean at temperature `soft_pool`
(activation units), lowers the temperature linearly to 0 by the middle of the run and ends on the
client's own model (`pooling.py`; the label screen's short runs stay hard). Measured on the
`realistic` victims (the `soft_pool` benchmark), one photo on the quickstart CNN: 6 of 8 at SSIM
>= 0.5 against 4 of 8 with hard pools throughout. Models without max-pools are unaffected.

Collapse: where the update holds few numbers per unknown pixel (16 images on a sigmoid LeNet),
the global cosine is carried by the classifier's gradient, which the labels nearly fix, and the
pixels' own gradient is close to noise; signed steps give every pixel a full step whatever its
gradient, so the pixels random-walk into the box bounds and the output is saturated noise, far
below a flat grey image. A run whose output has more than `saturated` of its pixels at the
bounds (collapsed runs: a quarter to four fifths; healthy ones: a few percent, as natural images) is
run again with the per-layer cosine, which gives the pixels' layers their weight, and the less
saturated output is kept (`info["collapsed"]` says so, and which run was kept).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedattack.attacks.base import AttackContext, Choice, LogRange, register_attack
from fedattack.attacks.engine import (DISTANCES, functional_model, leaked_features, matching, num_images,
                                      running_statistics, target)
from fedattack.attacks.labels import label_hypotheses
from fedattack.attacks.optimize import (INITS, AdamSchedule, Resized, best_restart, centre_info, coarse_to_fine,
                                        consensus, epoch_batches, grey_centres, init_unknowns, label_plan,
                                        observed_stats, random_orders, rescaled, run_adam, screen_labels, shrink,
                                        start_centre)
from fedattack.validate import check_choice, check_range
from fedattack.threat import Observation, Reconstruction


@dataclass
class InvGradParams:
    iterations: int = 2000
    lr: float = 0.1
    tv: float = 0.1  # weight of total variation (mean absolute neighbour difference); see `balanced`
    l2: float = 0.0  # weight of the mean squared pixel in model-input units (a pull toward the data mean)
    restarts: int = 1  # independent starts, best by mismatch (why one: see the docstring)
    candidates: int = 64  # label candidates screened when the labels are in doubt (at most `iterations`)
    label_search: int = 4  # rounds of local search over label candidates (swaps between steps, relabels)
    loss: str = "cosine"  # cosine | layer-cosine | l2 | l1
    init: str = "leaked-mean"  # noise around the colour the first layer leaks (docstring) | randn | uniform | mean
    output: str = "best"  # best (lowest mismatch) | consensus (mean of the aligned restarts)
    features: float = 0.0  # weight of the leaked-features prior (one image, one step: FC layers' inputs, exact)
    levels: int = 1  # coarse to fine: optimize at 1/2**(levels-1) of the resolution first, doubling per level
    signed: bool = True
    boxed: bool = True
    lr_decay: bool = True
    tv_decay: bool = False  # the priors' weights decay with the step size (x0.1 at each lr decay)
    balanced: bool = True  # tv and l2 as shares of the mismatch's input gradient at the start (model-independent)
    rebalance: bool = True  # balanced again where each phase starts (False: once, where the first starts)
    saturated: float = 0.2  # share of pixels at the box bounds that marks a collapsed run (rerun per-layer; 1: off)
    greys: int = 3  # flat grey starts sharing the iterations where the colour does not leak (docstring; 1: off)
    shrink: float = 0.0  # pull each output image toward its mean grey (0: none, 1: flat); calibration sets it
    soft_pool: float = 0.3  # max-pools softened at this temperature where a run starts, hard by its middle (docstring)
    bn_stats: float = 1.0  # weight of the returned BatchNorm running statistics, matched beside the update (0: off)

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "tv", self.tv, 0)
        check_range(name, "l2", self.l2, 0)
        check_range(name, "restarts", self.restarts, 1)
        check_range(name, "candidates", self.candidates, 1)
        check_range(name, "label_search", self.label_search, 0)
        check_choice(name, "loss", self.loss, sorted(DISTANCES))
        check_choice(name, "init", self.init, list(INITS))
        check_choice(name, "output", self.output, ["best", "consensus"])
        check_range(name, "levels", self.levels, 1, 5)
        check_range(name, "features", self.features, 0)
        check_range(name, "saturated", self.saturated, 0, 1)
        check_range(name, "greys", self.greys, 1)
        check_range(name, "shrink", self.shrink, 0, 1)
        check_range(name, "soft_pool", self.soft_pool, 0)
        check_range(name, "bn_stats", self.bn_stats, 0)


@register_attack("invgrad", params=InvGradParams, adaptive=True,
                 tunable={"tv": LogRange(1e-3, 1.0), "l2": LogRange(1e-3, 1.0), "lr": LogRange(0.01, 1.0),
                          "loss": Choice(("cosine", "layer-cosine")),
                          "init": Choice(("leaked-mean", "randn", "mean"))},
                 paper="Geiping et al., Inverting Gradients - How easy is it to break privacy in federated "
                       "learning?, NeurIPS 2020")
def invgrad(obs: Observation, params: InvGradParams, ctx: AttackContext) -> Reconstruction:
    rec = _started(obs, params, ctx)
    if rec.info["saturated"] > params.saturated and params.loss != "layer-cosine":
        rerun = _started(obs, replace(params, loss="layer-cosine"), ctx)
        kept = rerun if rerun.info["saturated"] < rec.info["saturated"] else rec
        kept.info["collapsed"] = {"loss": params.loss, "saturated": rec.info["saturated"],
                                  "rerun_saturated": rerun.info["saturated"],
                                  "kept": "rerun" if kept is rerun else "first"}
        rec = kept
    return replace(rec, images=shrink(rec.images, params.shrink, obs.data))


def saturation(x: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of the values of x (N, C, H, W) within 1% of the range of either box bound."""
    lo, hi = bounds
    margin = 0.01 * (hi - lo)
    return float(((x <= lo + margin) | (x >= hi - margin)).float().mean())


def _started(obs: Observation, params: InvGradParams, ctx: AttackContext) -> Reconstruction:
    """One inversion from the leaked colour or, where the update does not give it away and
    `greys` > 1, the lowest-loss of `greys` inversions from flat grey starts, each of half the
    iterations (see the docstring)."""
    returned = params.bn_stats and obs.returned_buffers
    stats = running_statistics(obs, functional_model(obs, ctx.device)) if returned else None
    centre = start_centre(params.init, target(obs, ctx.device), obs.data, stats)
    if centre is not None or params.init != "leaked-mean" or params.greys < 2:
        return _invert(obs, params, ctx, centre=centre)
    share = replace(params, init="mean", iterations=max(1, params.iterations // 2))
    runs = [_invert(obs, share, ctx, centre=c) for c in grey_centres(obs.data, params.greys)]
    best = min(range(len(runs)), key=lambda i: runs[i].info["loss"])
    rec = runs[best]
    rec.info.update(iterations=params.iterations, grey_starts={
        "losses": [round(r.info["loss"], 5) for r in runs], "chosen": best, "iterations_each": share.iterations})
    return rec


def _invert(obs: Observation, params: InvGradParams, ctx: AttackContext,
            centre: torch.Tensor | None = None) -> Reconstruction:
    """One inversion; `centre` (model-input units per channel) overrides the start's centre."""
    n = num_images(obs)
    gen = ctx.generator()
    k = max(params.restarts, min(params.candidates, params.iterations))
    hypotheses, method = label_hypotheses(obs, n, ctx.labels, k=k)
    plan = label_plan(hypotheses, obs.protocol, k, gen)
    problem = matching(obs, ctx.device, params.loss, {"tv": params.tv, "l2": params.l2}, adaptive=ctx.adaptive,
                       bn_stats=params.bn_stats)
    leaked = leaked_features(problem.trial, problem.target, n) if params.features else None
    if leaked is not None:
        problem = replace(problem, priors=(*problem.priors, (params.features, leaked)))
    if centre is None:
        centre = start_centre(params.init, problem.target, obs.data, observed_stats(problem))
    bounds = obs.data.bounds(ctx.device)
    sizes = coarse_to_fine(obs.data.shape, params.levels)
    full = tuple(obs.data.shape[1:])

    def at(size: tuple[int, int]):
        return problem if tuple(size) == full else Resized(problem, full)

    reshuffled = epoch_batches(n, obs.protocol) is not None
    orders = random_orders(len(plan), obs.protocol.local_epochs, n, gen) if reshuffled else None
    screened = len(plan) > params.restarts or reshuffled
    if screened:
        screen = AdamSchedule(max(1, params.iterations // 40), params.lr, params.signed, params.boxed, decay=False,
                              balanced=params.balanced, rebalance=params.rebalance)
        u = screen_labels(at(sizes[0]), plan, params.restarts, screen, data=obs.data, protocol=obs.protocol, gen=gen,
                          device=ctx.device, init=params.init, size=sizes[0], bounds=bounds,
                          rounds=params.label_search, orders=orders, centre=centre)
    else:
        u = init_unknowns(obs.data, n, params.restarts, plan, gen, ctx.device, params.init, size=sizes[0],
                          centre=centre)
    per_level = max(1, params.iterations // len(sizes))
    for level, size in enumerate(sizes):
        if level:
            u = rescaled(u, size)
        sched = AdamSchedule(per_level, params.lr, params.signed, params.boxed, params.lr_decay, params.tv_decay,
                             params.balanced, params.rebalance, soft_pool=params.soft_pool)
        final = run_adam(at(size), u, sched, bounds)
    r = best_restart(final)
    images = u.x[r].detach()
    if params.output == "consensus" and u.x.shape[0] > 1:
        same = [i for i in range(u.x.shape[0]) if torch.equal(u.labels[i].sort().values, u.labels[r].sort().values)
                and torch.isfinite(final[i])]
        images = consensus(u.x.detach()[[r] + [i for i in same if i != r]])
    return Reconstruction(images=images, labels=u.final_labels(r),
                          info={"loss": float(final[r]), "iterations": params.iterations, "restarts": params.restarts,
                                "label_method": method, "label_candidates": len(plan) if screened else 1,
                                "local_steps": max(1, obs.protocol.local_steps),
                                "saturated": saturation(images, bounds), "loss_used": params.loss,
                                "init_colour": centre_info(centre)})
