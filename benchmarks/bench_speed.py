"""Wall time of fedattack's DLG, CPL and Inverting Gradients against naive reference loops.

The references are written here in the style of the published implementations:
- DLG (Zhu et al., NeurIPS 2019): torch.optim.LBFGS at its defaults (lr 1, 20 evaluations
  per step) with a closure taking autograd.grad(create_graph=True) of the model's loss,
  restarts one after another;
- CPL (Wei et al., ESORICS 2020): the same loop from CPL's seed images, with the labels read
  off the gradient and fixed;
- Inverting Gradients (Geiping et al., NeurIPS 2020): a Python loop over restarts, each
  running signed Adam with the 3/8, 5/8, 7/8 step decay and boxed pixels; the trial update
  is autograd.grad(create_graph=True) on the module (one step) or local SGD unrolled with
  autograd on functional parameters (several steps).
Both sides start from the same images (and label logits) and match the same target; the CPL
and Inverting Gradients references are given the labels fedattack recovers.

Rows:
- time-to-target: wall seconds until the reconstruction reaches the PSNR target, checked
  every K objective evaluations; the check's own time is excluded. "not reached" gives the
  best PSNR seen within the budget. it/s = objective evaluations per second. In DLG's
  setting also dlg with a strong-Wolfe line search, and R-GAP (Zhu & Blaschko, ICLR 2021),
  which solves for the image in closed form: its time is the whole attack's, its "evals"
  the conjugate-gradient iterations over all layers.
- scaling: wall seconds of a fixed number of evaluations per restart, as restarts, batch
  size and image size grow (DLG setting otherwise), fedattack against the reference.
- quality: invgrad at its defaults on the 8-image multi-step case (mean PSNR / SSIM).
Timings are single runs on the device torch picks, torch threads in the `threads` column;
on a shared CPU they are noisy. Environment: FEDATTACK_SPEED_FACES (how many of the DLG-setting
faces, default all 5) and FEDATTACK_SPEED_SECONDS (each time-to-target run's cap, default 60)
shorten a run where device time is scarce.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedattack.attacks import ATTACKS, AttackContext, engine, optimize
from fedattack.attacks import cpl as cpl_module
from fedattack.attacks.labels import label_hypotheses
from fedattack.models import build_model
from fedattack.testing.cases import observed_update, psnr_ssim

TARGET_DB = 30.0
CHECK_EVERY = 10
THREADS = 1
DLG_SETTING = ("model.init=uniform", "data.channels=3", "client.batch_size=1", "client.local_steps=1")
DLG_FACES = [2, 3, 4, 7, 8]  # training-split faces of lfw-subset that DLG recovers in its setting
# invgrad doing the reference's work: one label candidate, one start (no grey starts), no rerun
EQUAL_WORK = {"candidates": 1, "greys": 1, "saturated": 1.0}
MULTI_STEP = ("model.init=uniform", "data.channels=3", "client.batch_size=2", "client.local_steps=2")


class Reached(Exception):
    pass


class Exhausted(Exception):
    pass


class Monitor:
    """Counts objective evaluations; every `every` of them scores the current images
    against the truth (timed apart) and stops the run at the target or the budget."""

    def __init__(self, obs, truth, every: int, evals: int, seconds: float, target: float = TARGET_DB):
        self.obs, self.truth, self.every, self.evals, self.seconds, self.target = obs, truth, every, evals, seconds, target
        self.calls, self.check_s, self.best, self.hit, self.wall = 0, 0.0, -math.inf, None, None
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.check_s

    def stop(self) -> "Monitor":
        """Fix the run's wall time (checks excluded) at its end."""
        self.wall = self.elapsed()
        return self

    def __call__(self, x: torch.Tensor) -> None:
        self.calls += 1
        if self.every and self.calls % self.every == 0:
            _sync()
            t = time.perf_counter()
            psnr, _ = psnr_ssim(x.detach().reshape(-1, *self.obs.data.shape), self.truth, self.obs)
            self.best = max(self.best, psnr)
            self.check_s += time.perf_counter() - t
            if psnr >= self.target:
                self.hit = self.elapsed()
                raise Reached
        if self.calls >= self.evals or self.elapsed() > self.seconds:
            raise Exhausted


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- naive references

def _module(obs, device):
    net = build_model(obs.model).to(device)
    net.load_state_dict({**obs.buffers, **obs.global_params}, strict=False)
    return net


def naive_dlg(obs, x0: torch.Tensor, y0: torch.Tensor | None, evals: int, hook=None,
              labels: torch.Tensor | None = None) -> None:
    """Zhu et al.'s loop: per restart, L-BFGS over (image, soft label) on the squared L2
    distance of gradients; `evals` closure evaluations per restart. With `labels` (Wei et
    al.'s CPL loop, started from its seed images), the labels are fixed and only the images
    are optimized."""
    device = x0.device
    net = _module(obs, device)
    target = [obs.gradient_estimate()[k].to(device) for k, _ in net.named_parameters()]
    for r in range(x0.shape[0]):
        dummy_data = x0[r].clone().requires_grad_(True)
        dummy_label = None if labels is not None else y0[r].clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([dummy_data] if labels is not None else [dummy_data, dummy_label])
        count = [0]

        def closure():
            if hook is not None:
                hook(dummy_data)
            count[0] += 1
            if count[0] > evals:
                raise Exhausted
            optimizer.zero_grad()
            pred = net(dummy_data)
            if labels is not None:
                loss = F.cross_entropy(pred, labels)
            else:
                onehot = F.softmax(dummy_label, dim=-1)
                loss = torch.mean(torch.sum(-onehot * F.log_softmax(pred, dim=-1), dim=-1))
            dy_dx = torch.autograd.grad(loss, net.parameters(), create_graph=True)
            grad_diff = sum(((gx - gy) ** 2).sum() for gx, gy in zip(dy_dx, target))
            grad_diff.backward()
            return grad_diff

        try:
            for _ in range(evals):
                optimizer.step(closure)
        except Exhausted:
            pass
    _sync()


def naive_invgrad(obs, x0: torch.Tensor, labels: torch.Tensor, iterations: int, hook=None, tv: float = 1e-6,
                  lr: float = 0.1, budget: int | None = None) -> None:
    """Geiping et al.'s loop: per restart, signed Adam on cosine distance + TV; several
    local steps unrolled with autograd on functional parameters."""
    device = x0.device
    net = _module(obs, device)
    names = [k for k, _ in net.named_parameters()]
    target = [obs.update[k].to(device) for k in names]
    lo, hi = obs.data.bounds(device)
    p = obs.protocol
    steps, b = max(1, p.local_steps), p.batch_size
    n = x0.shape[1]

    def trial_update(x):
        if steps == 1:
            loss = F.cross_entropy(net(x), labels)
            return [-g for g in torch.autograd.grad(loss, net.parameters(), create_graph=True)]
        params = dict(net.named_parameters())
        start = dict(params)
        for s in range(steps):
            idx = [(s * b + j) % n for j in range(b)]
            loss = F.cross_entropy(functional_call(net, params, (x[idx],)), labels[idx])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: v - p.lr * g for (k, v), g in zip(params.items(), grads)}
        return [params[k] - start[k] for k in names]

    for r in range(x0.shape[0]):
        x = x0[r].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(iterations / 2.667), int(iterations / 1.6), int(iterations / 1.142)], gamma=0.1)
        try:
            for it in range(budget or iterations):
                def closure():
                    if hook is not None:
                        hook(x)
                    optimizer.zero_grad()
                    net.zero_grad()
                    trial = trial_update(x)
                    dot = sum((t * o).sum() for t, o in zip(trial, target))
                    norm = sum((t ** 2).sum() for t in trial).sqrt() * sum((o ** 2).sum() for o in target).sqrt()
                    loss = 1 - dot / norm
                    loss = loss + tv * (torch.mean(torch.abs(x[..., :, :-1] - x[..., :, 1:]))
                                        + torch.mean(torch.abs(x[..., :-1, :] - x[..., 1:, :])))
                    loss.backward()
                    x.grad.sign_()
                    return loss

                optimizer.step(closure)
                scheduler.step()
                with torch.no_grad():
                    x.data = torch.max(torch.min(x, hi), lo)
        except Exhausted:
            pass
    _sync()


# ---------------------------------------------------------------- fedattack side

@contextmanager
def _watch(attack: str, hook):
    """Call `hook(images)` before each objective evaluation of fedattack's optimizer."""
    if attack == "dlg":
        original = engine.Matching.objective

        def objective(self, x, y):
            hook(x)
            return original(self, x, y)

        with mock.patch.object(engine.Matching, "objective", objective):
            yield
    elif attack == "cpl":
        original = cpl_module.gradient

        def gradient(v, params, x, y, *args, **kwargs):
            hook(x)
            return original(v, params, x, y, *args, **kwargs)

        with mock.patch.object(cpl_module, "gradient", gradient):
            yield
    else:
        original = optimize.batched_objective

        def batched(problem, u, which="objective"):
            if which == "objective":
                hook(u.x[0])
            return original(problem, u, which)

        with mock.patch.object(optimize, "batched_objective", batched):
            yield


def _fedattack(attack: str, obs, iterations: int, restarts: int, hook=None, **extra) -> None:
    """fedattack's attack for `iterations` objective evaluations per restart (dlg and cpl: one
    per L-BFGS step, the same run as the authors' 20 per step, evaluation for evaluation)."""
    spec = ATTACKS.get(attack)
    if attack in ("dlg", "cpl"):
        extra.setdefault("max_iter", 1)
    params = replace(spec.params(), iterations=iterations, restarts=restarts, **extra)
    ctx = AttackContext(device=_device(), seed=0)
    if hook is None:
        spec(obs, params, ctx)
    else:
        with _watch(attack, hook):
            try:
                spec(obs, params, ctx)
            except (Reached, Exhausted):
                pass
    _sync()


def _start(obs, restarts: int, with_logits: bool):
    """The initial unknowns fedattack draws (ctx.generator(), seed 0): images, then logits."""
    gen = AttackContext(seed=0).generator()
    n = max(1, obs.protocol.num_examples or obs.protocol.batch_size)
    x = torch.randn((restarts, n, *obs.data.shape), generator=gen).to(_device())
    y = torch.randn((restarts, n, obs.data.num_classes), generator=gen).to(_device()) if with_logits else None
    return x, y


def _cpl_start(obs, restarts: int) -> torch.Tensor:
    """The seed images fedattack's cpl starts restart r from (ctx.generator(r), seed 0)."""
    n = max(1, obs.protocol.num_examples or obs.protocol.batch_size)
    init = ATTACKS.get("cpl").params().init
    return torch.stack([cpl_module.seed_images(init, n, obs.data, AttackContext(seed=0).generator(r))
                        for r in range(restarts)]).to(_device())


def _naive(attack: str, obs, restarts: int, evals: int, hook=None) -> None:
    """The naive reference loop of `attack`, from the same starting point as fedattack's."""
    if attack == "dlg":
        x0, y0 = _start(obs, restarts, True)
        naive_dlg(obs, x0, y0, evals, hook=hook)
    elif attack == "cpl":
        naive_dlg(obs, _cpl_start(obs, restarts), None, evals, hook=hook, labels=_labels(obs))
    else:
        x0, _ = _start(obs, restarts, False)
        naive_invgrad(obs, x0, _labels(obs), evals, hook=hook)


def _labels(obs):
    hyps, _ = label_hypotheses(obs, max(1, obs.protocol.num_examples), "auto", k=1)
    return hyps[0].to(_device())


# ---------------------------------------------------------------- rows

def _reach(side: str, attack: str, obs, truth, evals: int, seconds: float, **extra) -> Monitor:
    """One run to the PSNR target: fedattack's attack (with `extra` params) or the naive loop."""
    mon = Monitor(obs, truth, CHECK_EVERY, evals, seconds)
    try:
        if side == "fedattack":
            _fedattack(attack, obs, evals, 1, hook=mon, **extra)
        else:
            _naive(attack, obs, 1, evals, hook=mon)
    except (Reached, Exhausted):
        pass
    return mon.stop()


def _rgap_reach(obs, truth) -> Monitor:
    """R-GAP runs to its own end; the target counts as reached at its wall time if its result
    is there. `calls` = CGLS iterations over all layers."""
    spec = ATTACKS.get("rgap")
    mon = Monitor(obs, truth, 0, 1, math.inf)
    rec = spec(obs, spec.params(), AttackContext(device=_device(), seed=0))
    _sync()
    mon.stop()
    mon.best, _ = psnr_ssim(rec.images, truth, obs)
    mon.calls = sum(rec.info["iterations"])
    mon.hit = mon.wall if mon.best >= mon.target else None
    return mon


def _reach_row(case: str, attack: str, fed: Monitor, naive: Monitor) -> dict:
    def shown(m):
        return m.hit if m.hit is not None else "not reached"

    return {"table": "time to PSNR target", "case": case, "attack": attack, "target_db": TARGET_DB,
            "fedattack_s": shown(fed), "naive_s": shown(naive),
            "ratio_naive/fed": naive.hit / fed.hit if fed.hit and naive.hit else "",
            "fed_best_db": fed.best, "naive_best_db": naive.best,
            "fed_evals": fed.calls, "naive_evals": naive.calls,
            "fed_it/s": fed.calls / max(fed.wall if fed.hit is None else fed.hit, 1e-9),
            "naive_it/s": naive.calls / max(naive.wall if naive.hit is None else naive.hit, 1e-9),
            "check_s_excluded": fed.check_s + naive.check_s, "threads": torch.get_num_threads()}


def dlg_setting_rows(face: int, evals: int, seconds: float) -> list[dict]:
    """DLG's setting on one face: dlg as the authors run it, dlg with a strong-Wolfe line
    search and R-GAP's closed-form recursion, each against the naive DLG loop; cpl against
    the naive CPL loop."""
    obs, truth = observed_update("seed=0", *DLG_SETTING, indices=[face])
    obs = obs.to(_device())
    case = f"DLG setting (1 img, 1 step), face {face}"
    naive = _reach("naive", "dlg", obs, truth, evals, seconds)
    return [_reach_row(case, "dlg", _reach("fedattack", "dlg", obs, truth, evals, seconds), naive),
            _reach_row(case, "dlg line_search=strong_wolfe",
                       _reach("fedattack", "dlg", obs, truth, evals, seconds, line_search="strong_wolfe",
                              max_iter=20), naive),
            _reach_row(case, "rgap", _rgap_reach(obs, truth), naive),
            _reach_row(case, "cpl", _reach("fedattack", "cpl", obs, truth, evals, seconds),
                       _reach("naive", "cpl", obs, truth, evals, seconds))]


def invgrad_row(case: str, obs, truth, evals: int, seconds: float) -> dict:
    obs = obs.to(_device())
    return _reach_row(case, "invgrad", _reach("fedattack", "invgrad", obs, truth, evals, seconds, candidates=1),
                      _reach("naive", "invgrad", obs, truth, evals, seconds))


def _timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _scaling_row(axis: str, value, attack: str, obs, restarts: int, evals: int) -> dict:
    obs = obs.to(_device())
    # invgrad: one label candidate and one start, no rerun, as the reference; cpl: L-BFGS at every size
    extra = {"invgrad": EQUAL_WORK, "cpl": {"optimizer": "lbfgs"}}.get(attack, {})
    fed = _timed(lambda: _fedattack(attack, obs, evals, restarts, **extra))
    naive = _timed(lambda: _naive(attack, obs, restarts, evals))
    return {"table": f"scaling: {axis}", "case": f"{axis}={value}", "attack": attack, "evals": evals,
            "fedattack_s": fed, "naive_s": naive, "ratio_naive/fed": naive / fed,
            "threads": torch.get_num_threads()}


def quality_rows(quick: bool) -> list[dict]:
    obs, truth = observed_update("seed=0", "client.batch_size=2", "client.local_steps=4", "client.lr=0.01")
    obs = obs.to(_device())
    rows = []
    spec = ATTACKS.get("invgrad")
    for iterations in ([100] if quick else [spec.params().iterations]):
        params = replace(spec.params(), iterations=iterations)
        t0 = time.perf_counter()
        rec = spec(obs, params, AttackContext(device=_device(), seed=0))
        _sync()
        sec = time.perf_counter() - t0
        psnr, ssim = psnr_ssim(rec.images, truth, obs)
        rows.append({"table": "invgrad quality", "case": "8 img, 4 steps of 2, lr 0.01, lenet/sigmoid default "
                     "init, lfw-subset 32 px", "attack": f"invgrad iterations={iterations}",
                     "fedattack_s": sec, "psnr": psnr, "ssim": ssim, "threads": torch.get_num_threads()})
    return rows


def _warm_up(obs) -> None:
    """One short run of each side first, so that no timed row pays the process's first calls."""
    _fedattack("dlg", obs, 3, 1)
    _fedattack("invgrad", obs, 3, 1, **EQUAL_WORK)
    ATTACKS.get("rgap")(obs, ATTACKS.get("rgap").params(), AttackContext(device=_device()))
    _fedattack("cpl", obs, 3, 1)
    for attack in ("dlg", "invgrad", "cpl"):
        _naive(attack, obs, 1, 3)


def settings(quick: bool) -> tuple[float, list[int]]:
    """The time budget per attack and the faces: FEDATTACK_SPEED_SECONDS (default 60) and
    FEDATTACK_SPEED_FACES (how many of DLG_FACES, default all); quick: 5 s and one face."""
    if quick:
        return 5.0, DLG_FACES[:1]
    raw_s = os.environ.get("FEDATTACK_SPEED_SECONDS", "").strip() or "60"
    raw_f = os.environ.get("FEDATTACK_SPEED_FACES", "").strip() or str(len(DLG_FACES))
    try:
        seconds = float(raw_s)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"FEDATTACK_SPEED_SECONDS={raw_s!r}: give a positive number of seconds (unset: 60)")
    if not (raw_f.isascii() and raw_f.isdigit() and 1 <= int(raw_f) <= len(DLG_FACES)):
        raise ValueError(f"FEDATTACK_SPEED_FACES={raw_f!r}: give how many faces, 1 to {len(DLG_FACES)} "
                         f"(unset: {len(DLG_FACES)})")
    return seconds, DLG_FACES[:int(raw_f)]


def check(quick: bool) -> None:
    settings(quick)


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(THREADS)
    rows = []
    dlg_evals, inv_evals = (100, 200) if quick else (6000, 1000)
    seconds, faces = settings(quick)
    obs, truth = observed_update("seed=0", *DLG_SETTING)
    _warm_up(obs)
    for face in faces:  # DLG's full budget: 300 steps x 20
        rows += dlg_setting_rows(face, dlg_evals, seconds)
    rows.append(invgrad_row("DLG setting (1 img, 1 step)", obs, truth, inv_evals, seconds))
    if not quick:
        mobs, mtruth = observed_update("seed=0", *MULTI_STEP)
        rows.append(invgrad_row("4 img, 2 steps of 2", mobs, mtruth, inv_evals, seconds))
    n_evals = 10 if quick else 30
    restarts = [1, 4] if quick else [1, 4, 16]
    batches = [1, 2] if quick else [1, 2, 4, 8]
    sizes = [16, 32] if quick else [16, 32, 64]
    for attack in ("dlg", "invgrad", "cpl"):
        for r in restarts:
            rows.append(_scaling_row("restarts", r, attack, obs, r, n_evals))
        for b in batches:
            bobs, _ = observed_update("seed=0", *DLG_SETTING[:-2], f"client.batch_size={b}", "client.local_steps=1")
            rows.append(_scaling_row("batch", b, attack, bobs, 1, n_evals))
        for s in sizes:
            sobs, _ = observed_update("seed=0", *DLG_SETTING, f"data.image_size={s}")
            rows.append(_scaling_row("image size", s, attack, sobs, 1, n_evals))
    return rows + quality_rows(quick)
