"""Label recovery from the last layer's gradient, one registry entry per method.

Each method: `fn(obs: Observation, n: int) -> LongTensor (n,)`, the labels of the n
samples behind the update, as a sorted multiset (a batch carries no order).

Notation: the classification layer maps features h (F,) to logits with W (C, F) and
b (C,). For softmax cross-entropy averaged over U sample uses (U = n for one local step,
steps x batch size for several; the update read as one gradient averages them all), with
p the softmax output and y the one-hot label,

    dL/db_c = 1/U sum_u (p_uc - y_uc),    dL/dW_c = 1/U sum_u (p_uc - y_uc) h_u,

so a class present in the batch pulls its row negative in proportion to its count.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import torch

from fedattack.attacks.engine import functional_model
from fedattack.defenses.base import keep_signs, scaled_by
from fedattack.errors import ConfigError
from fedattack.registry import Registry, own_function
from fedattack.threat import Observation

LABELS: Registry[Callable[[Observation, int], torch.Tensor]] = Registry("label method", "audit.labels",
                                                                          accepts=own_function(2, "label method"))

DUMMY_INPUTS = 64  # dummy images used to estimate mean class probabilities and features
SCALE_GRID = 200  # factors tried where a defense scaled the update by one it does not tell (`unscaled`)


def last_layer_name(obs: Observation) -> str:
    """Name of the classification layer's weight: the last 2-D weight with num_classes rows."""
    c = obs.data.num_classes
    name = next((k for k in reversed(list(obs.global_params))
                 if k.endswith("weight") and obs.global_params[k].ndim == 2 and obs.global_params[k].shape[0] == c), None)
    if name is None:
        raise ValueError(f"the model has no fully connected classification layer (a 2-D weight with {c} rows, one "
                         f"per class), the layer every label-recovery method (audit.labels) reads")
    return name


def last_layer(obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dW, db) of the classification layer, read as a gradient (-update / lr / steps)."""
    grad = obs.gradient_estimate()
    w_name = last_layer_name(obs)
    return grad[w_name], grad.get(w_name[: -len("weight")] + "bias")


def _multiset(classes: torch.Tensor) -> torch.Tensor:
    return torch.sort(classes.long()).values


def _ranked(score: torch.Tensor, n: int) -> torch.Tensor:
    """The n lowest-scoring classes, cycling through the ranking when n > classes."""
    order = torch.argsort(score)
    return _multiset(order[torch.arange(n, device=order.device) % len(order)])


def scaled(expected: torch.Tensor, n: int) -> torch.Tensor:
    """Real-valued expected counts (C,) as float64 summing to n: negative estimates count as
    zero; all-zero estimates become uniform."""
    k = expected.detach().double().clamp(min=0)
    k = torch.ones_like(k) if float(k.sum()) <= 0 else k
    return k * n / k.sum()


def apportion(expected: torch.Tensor, n: int) -> torch.Tensor:
    """Integer counts per class summing to n from real-valued expected counts
    (negative estimates count as zero; largest remainders get the leftover units)."""
    k = scaled(expected, n)
    counts = torch.floor(k)
    left = int(n - counts.sum())
    if left > 0:
        counts[torch.argsort(k - counts, descending=True)[:left]] += 1
    return counts.long()


def counts_to_labels(counts: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


@LABELS.register("idlg", doc="Zhao et al., iDLG (2020): the one negative entry of the last layer's gradient")
def idlg(obs: Observation, n: int) -> torch.Tensor:
    """Exact for one sample (non-negative features or a bias); for n > 1, the n most
    negative classes."""
    dw, db = last_layer(obs)
    return _ranked(db if db is not None else dw.sum(1), n)


@LABELS.register("yin", doc="Yin et al., See through Gradients (GradInversion), CVPR 2021: row minima of dW")
def yin(obs: Observation, n: int) -> torch.Tensor:
    """Classes ranked by the minimum of their weight-gradient row; assumes distinct labels."""
    dw, _ = last_layer(obs)
    return _ranked(dw.min(dim=1).values, n)


@LABELS.register("llg", doc="Wainakh et al., User-Level Label Leakage from Gradients in FL, PETS 2022 (LLG)")
def llg(obs: Observation, n: int) -> torch.Tensor:
    """LLG: every class with a negative row sum of dW is present; its estimated impact m
    (the negative mass per sample) is then removed repeatedly from the most negative class."""
    dw, _ = last_layer(obs)
    g = dw.sum(1).double().clone()
    c = len(g)
    m = g.clamp(max=0).sum() * (1 + 1 / c) / n
    chosen: list[int] = []
    for cls in torch.nonzero(g < 0).flatten().tolist()[:n]:
        chosen.append(cls)
        g[cls] -= m
    while len(chosen) < n:
        cls = int(torch.argmin(g))
        chosen.append(cls)
        g[cls] -= m
    return _multiset(torch.tensor(chosen, device=dw.device))


def dummy_statistics(obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax output (C,) and mean last-layer input (F,) of the observed model on
    random images (uniform pixels), the attacker's stand-in for the unknown batch."""
    v = functional_model(obs)
    device = next(iter(v.params.values())).device
    layer = v.module.get_submodule(last_layer_name(obs)[: -len(".weight")])
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    gen = torch.Generator().manual_seed(0)
    x01 = torch.rand((DUMMY_INPUTS, *obs.data.shape), generator=gen).to(device)
    try:
        with torch.no_grad():
            probs = torch.softmax(v.logits(v.params, obs.data.normalize(x01)), dim=-1)
    finally:
        handle.remove()
    return probs.mean(0), seen[-1].flatten(1).mean(0)


def geng_counts(obs: Observation, n: int) -> torch.Tensor:
    """Expected label counts (C,) of the n samples, real-valued. Row sums of dW give
    1/U sum_u (p_uc - y_uc) s_u with s_u = sum_f h_uf; with p and s replaced by their
    dummy-image means, count_c = n (p_c - sum_f dW_cf / s). (Over several steps each sample
    is used U / n times, and the per-use counts scale back to n.)"""
    dw, _ = last_layer(obs)
    p, h = dummy_statistics(obs)
    return n * (p - unscaled(obs, dw.sum(1) / h.sum(), p, n))


def bias_counts(obs: Observation, n: int) -> torch.Tensor:
    """Expected label counts (C,) from the bias gradient: count_c = n (p_c - db_c)."""
    _, db = last_layer(obs)
    if db is None:
        return geng_counts(obs, n)
    p, _ = dummy_statistics(obs)
    return n * (p - unscaled(obs, db, p, n))


def unscaled(obs: Observation, signal: torch.Tensor, p: torch.Tensor, n: int) -> torch.Tensor:
    """`signal` (C,), what the update gives per class of p_c - count_c / n (the bias gradient,
    or dW's row sums over the features' sum), in gradient units, with p the estimated mean
    softmax output. Where a defense multiplied the update by a positive factor s the server is
    not told (`clip` at its bound: `DefenseSpec.scales`), the signal is s times the true one and
    every count n (p_c - signal_c) is off: clipping to a tenth of the update's norm cost the
    bias counts about a fifth of 4 to 8 labels on average. The counts are whole numbers, so s is
    taken as the factor, among SCALE_GRID values log-spaced from 1 down to 1e-3 (or lower, down to
    the smallest factor that keeps every count >= 0, where that is below 1e-3), whose counts
    n (p - signal / s) lie nearest to whole non-negative numbers, and divided out. Over 40
    clipped updates (LeNet, an MLP and the quickstart CNN on photos, digits and LFW, 4 and 8
    images) this recovered 98% of the labels, against 78% without it and 90% for the smallest
    factor alone; with two classes whole counts fit at several factors and it can still miss."""
    positive = signal > 0
    if not bool(positive.any()) or not scaled_by(obs.protocol.defenses, obs.gradient_estimate()):
        return signal
    signal, p = signal.double(), p.to(signal.device).double()
    smallest = float(signal[positive].sum() / p[positive].sum())  # below it some count is negative
    grid = np.exp(np.linspace(np.log(min(1e-3, smallest)), 0.0, SCALE_GRID))
    counts = n * (p[None] - signal[None] / torch.as_tensor(grid, dtype=torch.float64, device=signal.device)[:, None])
    distance = ((counts - counts.clamp(min=0).round()) ** 2).sum(1)
    return signal / float(grid[int(torch.argmin(distance))])  # the smallest factor among ties


COUNT_ESTIMATES: dict[str, Callable[[Observation, int], torch.Tensor]] = {"geng": geng_counts, "bias": bias_counts}


@LABELS.register("geng", doc="Geng et al., Towards General Deep Leakage in Federated Learning, 2021: "
                             "counts from dW with probabilities and features estimated on dummy images")
def geng(obs: Observation, n: int) -> torch.Tensor:
    return counts_to_labels(apportion(geng_counts(obs, n), n))


@LABELS.register("bias", doc="counts from the bias gradient: count_c = U (p_c - db_c), p estimated on dummy "
                             "images (the bias form of Geng et al.'s count estimate)")
def bias(obs: Observation, n: int) -> torch.Tensor:
    return counts_to_labels(apportion(bias_counts(obs, n), n))


def nearby_counts(expected: torch.Tensor, n: int, k: int) -> list[torch.Tensor]:
    """Up to k integer count vectors summing to n, closest to `expected` first: the rounded
    estimate, then the vectors one or two unit moves away, by squared distance."""
    e = scaled(expected, n).cpu()
    base = apportion(e, n).cpu()
    found = {tuple(base.tolist())}
    frontier = [base]
    for _ in range(2):
        nxt = []
        for c in frontier:
            for a in torch.nonzero(c > 0).flatten().tolist():
                for b in range(len(c)):
                    if b != a:
                        m = c.clone()
                        m[a] -= 1
                        m[b] += 1
                        if tuple(m.tolist()) not in found:
                            found.add(tuple(m.tolist()))
                            nxt.append(m)
        frontier = nxt
    ranked = sorted(found, key=lambda t: (float(((torch.tensor(t, dtype=torch.float64) - e) ** 2).sum()), t))
    ranked.remove(tuple(base.tolist()))
    return [base] + [torch.tensor(t) for t in ranked[: max(0, k - 1)]]


def present_classes(obs: Observation) -> torch.Tensor | None:
    """The classes the update proves present, or None where the protocol proves nothing.

    Under softmax cross-entropy an absent class c has dL/db_c = mean_u p_uc > 0 at every local
    step, and SGD (with or without momentum) or Adam without weight decay moves its bias down
    by a positive combination of those: its bias update is never positive, so every class whose
    bias went up is in the batch. A defense that keeps the update's signs (clipping, top-k,
    pruning, Soteria, zero noise: `DefenseSpec.keeps_signs`) leaves the proof standing; one that
    can flip them (noise, mixup, quantization, ...) leaves nothing proven. SGD's weight decay
    adds weight_decay * b to each step's bias gradient: `gradient_estimate` takes it out exactly
    for one local step, so the proof stands there; over several steps it is taken out only to
    first order, and nothing is proven. FedProx's pull
    mu * (b - b_global) keeps the bias at or below where it started while each plain SGD step
    shrinks the gap (lr * mu <= 1); past that, or with momentum or Adam, it can overshoot."""
    p = obs.protocol
    decayed = p.weight_decay and (p.optimizer != "sgd" or p.local_steps != 1)
    if not keep_signs(p.defenses) or decayed or p.optimizer not in ("sgd", "adam"):
        return None
    if p.proximal_mu and (p.optimizer != "sgd" or p.momentum or p.lr * p.proximal_mu > 1):
        return None
    _, db = last_layer(obs)
    return None if db is None else torch.nonzero(db < 0).flatten()


def label_hypotheses(obs: Observation, n: int, method: str = "auto", k: int = 1) -> tuple[list[torch.Tensor], str]:
    """Up to k candidate label multisets, most plausible first (the method's own answer).

    Count methods (bias, geng) rank nearby integer counts by distance to their real-valued
    estimate; the others give their answer only. Candidates that leave out a class the update
    proves present (`present_classes`) are dropped: where few samples are left to place, every
    completion of the proven classes is ranked (n proven classes: the multiset is known). An
    attack that can score candidates (by its final gradient mismatch) spreads its restarts over
    them."""
    labels, method = recover_labels(obs, n, method)
    if k <= 1 or method not in COUNT_ESTIMATES:
        return [labels], method
    device = labels.device
    expected = COUNT_ESTIMATES[method](obs, n)
    present = present_classes(obs)
    if present is not None and 0 < len(present) <= n:
        counts = completions(present.cpu(), expected, n, k)
        if counts:
            return [counts_to_labels(c).to(device) for c in counts], method
    counts = nearby_counts(expected, n, k)
    if present is not None:
        counts = [c for c in counts if bool((c[present.cpu()] > 0).all())] or counts
    return [counts_to_labels(c).to(device) for c in counts], method


def completions(present: torch.Tensor, expected: torch.Tensor, n: int, k: int,
                limit: int = 20_000) -> list[torch.Tensor]:
    """The k count vectors with every `present` class at least once, closest to `expected`
    (`scaled` to n) first, when there are at most `limit` of them (else
    none: the caller falls back to `nearby_counts`)."""
    classes, rest = len(expected), n - len(present)
    if math.comb(classes + rest - 1, rest) > limit:
        return []
    e = scaled(expected, n).cpu().numpy()
    base = np.zeros(classes, dtype=np.int64)
    base[present.numpy()] = 1
    extra = np.array(list(itertools.combinations_with_replacement(range(classes), rest)), dtype=np.int64)
    counts = base + (extra.reshape(len(extra), rest)[:, :, None] == np.arange(classes)).sum(1)
    distance = ((counts - e) ** 2).sum(1)
    order = np.lexsort((*counts.T[::-1], distance))  # by distance, ties by the counts themselves
    return [torch.from_numpy(counts[i].copy()) for i in order[:k]]


def recover_labels(obs: Observation, n: int, method: str = "auto") -> tuple[torch.Tensor, str]:
    """Labels for n samples; `auto` picks iDLG for one sample and count estimation for more."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("n", f"the number of samples to label, an integer >= 1; got {n!r}")
    if method == "auto":
        method = "idlg" if n == 1 else "bias"
    return LABELS.get(method)(obs, n), method


def _dummy_statistics_at(obs: Observation, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`dummy_statistics` of the model with the given float parameters."""
    from dataclasses import replace

    moved = replace(obs, global_params={k: params.get(k, v) for k, v in obs.global_params.items()})
    return dummy_statistics(moved)


def dimitrov_counts(obs: Observation, n: int) -> torch.Tensor:
    """Expected label counts (C,) over a multi-step local training (Dimitrov et al.).

    The server knows the model at both ends of local training: the global model and
    global + update. The mean softmax output p_t (and last-layer input h_t) at each local
    step t = 0..T-1 is estimated on dummy images at the two ends and interpolated linearly,
    p_t = (1 - t/T) p_start + t/T p_end. With the bias: count_c = n (mean_t p_tc - db_c);
    without: count_c = n (mean_t p_tc s_t - sum_f dW_cf) / mean_t s_t, s_t = sum_f h_tf."""
    dw, db = last_layer(obs)
    end = {k: v + obs.update[k].to(v.device) if k in obs.update else v for k, v in obs.global_params.items()}
    p0, h0 = dummy_statistics(obs)
    p1, h1 = _dummy_statistics_at(obs, end)
    steps = max(1, obs.protocol.local_steps)
    a = torch.arange(steps, dtype=p0.dtype, device=p0.device) / steps
    p = (1 - a)[:, None] * p0 + a[:, None] * p1.to(p0.device)  # (T, C)
    if db is not None:
        return n * (p.mean(0) - unscaled(obs, db.to(p.device), p.mean(0), n))
    s = (1 - a) * h0.sum() + a * h1.to(h0.device).sum()  # (T,)
    q = (p * s[:, None]).mean(0) / s.mean()
    return n * (q - unscaled(obs, dw.sum(1).to(p.device) / s.mean(), q, n))


COUNT_ESTIMATES["dimitrov"] = dimitrov_counts


@LABELS.register("dimitrov", doc="Dimitrov et al., Data Leakage in Federated Averaging, TMLR 2022: counts from "
                                 "the last layer's update, softmax interpolated between the start and end models")
def dimitrov(obs: Observation, n: int) -> torch.Tensor:
    return counts_to_labels(apportion(dimitrov_counts(obs, n), n))
