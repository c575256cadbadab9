"""Calibration: the server tunes an attack to its own deployment before attacking.

A real adversary does not run an attack at defaults tuned to someone else's model: it knows the
protocol it configured (model and global weights, learning rate, local steps or epochs, batch
size, defenses), so it can simulate a client on data it holds itself, run the attack on those
simulated updates, score the reconstructions against the images it knows, and keep the
hyperparameters that leak most. That is what `calibrate` does, with a well-kept tuner
(nevergrad's NGOpt) over each attack's search space (the `tunable` it registers); the attack's
configured parameters are always the first candidate, and a candidate replaces them only where
it `improves` on them: at least as well on every one of the cases (within a tie of 0.05 dB) and
better on their mean, or, over three cases or more, a mean paired gain whose one-sided 95%
Student-t lower bound is above zero. A handful of cases is a noisy judge (one unlucky label
recovery moves a mean by several dB), and a choice that wins on one case by losing on another
says more about the cases than about the deployment; but over eight single-image cases, one
small loss beside seven large gains is a clear win, and the t bound says so. The winner of a
search over a few cases is also flattered by them (the best of a dozen noisy scores is biased
upward), so where `held_out` cases are given, the winner must beat the configured values again,
by the same rule, on those fresh cases before it is used. The victims' data is never used: the
cases come from the images the caller passes (the test split, or another dataset the user
names).

`simulate_cases` builds those cases. The client's local training is replayed on real images
with the engine (fedattack.attacks.engine.replay: the same SGD or Adam steps, per-epoch
reshuffles as the client draws them), and the defenses that act on the update are applied
through their own `on_update` hooks. Defenses that act inside training (DP-SGD's per-sample
clipping, mixup, ...) are not simulated; `CalibrationCases.unmodelled` names them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np
import torch

from fedattack.attacks.base import ATTACKS, AttackContext, Choice, LogRange
from fedattack.attacks.engine import RunningStatsRecorder, functional_model, replay, schedule
from fedattack.attacks.ggl import blas_single_thread
from fedattack.attacks.optimize import shrink
from fedattack.defenses.base import DEFENSES, DefenseContext
from fedattack.errors import AttackFailure, first_line
from fedattack.metrics.score import score
from fedattack.results import STRETCHED, SWITCHES
from fedattack.threat import Observation, Reconstruction, Truth
from fedattack.text import counted


# -- search spaces --------------------------------------------------------------------------

def tunable(attack: str) -> dict[str, LogRange | Choice]:
    """The hyperparameters calibration tunes for `attack`, as it registered them."""
    return dict(ATTACKS.get(attack).tunable)


# -- simulated cases ---------------------------------------------------------------------

@dataclass
class CalibrationCases:
    cases: list[tuple[Observation, Truth]]
    unmodelled: tuple[str, ...] = ()  # defenses in force that the simulation leaves out

    def split(self, k: int) -> tuple["CalibrationCases", "CalibrationCases"]:
        """The first k cases and the rest (to tune on, and to confirm the choice on)."""
        return (CalibrationCases(self.cases[:k], self.unmodelled), CalibrationCases(self.cases[k:], self.unmodelled))


def case_count(cases: int, images_per_case: int, min_images: int) -> int:
    """Simulated updates per judge (to tune on, and as many to confirm on): `cases`, or more
    where `cases` updates of `images_per_case` images hold fewer than `min_images` images in all."""
    return max(cases, -(-max(0, min_images) // max(1, images_per_case)))


def client_size(obs: Observation) -> int:
    """Images per simulated client: the observed client's example count (its batch size where unknown)."""
    return max(1, obs.protocol.num_examples or obs.protocol.batch_size)


def judges(obs: Observation, images: torch.Tensor, labels: torch.Tensor, *, cases: int, min_images: int, seed: int
           ) -> tuple[CalibrationCases, CalibrationCases]:
    """The simulated updates to tune on and as many fresh ones to confirm the winner on:
    `case_count(cases, client_size(obs), min_images)` each (`simulate_cases`)."""
    k = case_count(cases, client_size(obs), min_images)
    return simulate_cases(obs, images, labels, count=2 * k, seed=seed).split(k)


def simulate_cases(obs: Observation, images: torch.Tensor, labels: torch.Tensor, *, count: int, seed: int
                   ) -> CalibrationCases:
    """`count` simulated client updates of the protocol `obs` was produced under, each on
    `client_size(obs)` images drawn (seeded) from the server's own `images`/`labels`
    (model-input space), starting from the global weights `obs` holds."""
    n = client_size(obs)
    if n > len(labels):
        raise AttackFailure(f"calibration simulates clients as large as this one, {n} images, and its data holds "
                            f"{len(labels)}; give it at least {n}")
    rng = np.random.default_rng(seed)
    fm = functional_model(obs, torch.device("cpu"))
    known = [(spec, d) for d in obs.protocol.defenses if (spec := DEFENSES.find(d.name)) is not None]
    update_defenses = [(spec, d) for spec, d in known if _acts_on_update_only(spec)]
    unmodelled = tuple(d.name for d in obs.protocol.defenses if all(d is not u for _, u in update_defenses))
    steps = schedule(n, obs.protocol.batch_size, obs.protocol.local_steps, obs.protocol.local_epochs)
    per_epoch = -(-n // max(1, min(obs.protocol.batch_size, n)))
    epochs = len(steps) // per_epoch if len(steps) == max(1, obs.protocol.local_epochs) * per_epoch else 1
    out = []
    for c in range(count):
        idx = torch.as_tensor(rng.choice(len(labels), size=n, replace=False))
        x, y = images[idx].float(), labels[idx].long()
        # the BatchNorm buffers the client returns, where the observed one returned any
        running = RunningStatsRecorder(fm, obs.buffers) if obs.returned_buffers else None
        if epochs > 1:  # the client reshuffles every epoch
            orders = [torch.as_tensor(rng.permutation(n)) for _ in range(epochs)]
            update = replay(fm, torch.stack([x[o] for o in orders]), torch.stack([y[o] for o in orders]),
                            obs.protocol, on_step=running)
        else:
            update = replay(fm, x, y, obs.protocol, on_step=running)
        update = {k: v.detach() for k, v in update.items()}
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        ctx = DefenseContext(model=None, images=x, labels=y, num_classes=obs.data.num_classes, generator=gen,
                             steps=len(steps), lr=obs.protocol.lr, data=obs.data)
        for spec, setting in update_defenses:
            update = spec.on_update(update, spec.params(**setting.params), ctx)
        returned = running.buffers if running is not None else {}
        truth = Truth(images=x, labels=y, indices=tuple(int(i) for i in idx))
        out.append((replace(obs, update=update, returned_buffers=returned), truth))
    return CalibrationCases(out, unmodelled)


def _acts_on_update_only(spec) -> bool:
    return spec.on_update is not None and not (spec.on_train or spec.on_batch or spec.loss)


# -- tuning ---------------------------------------------------------------------------------

@dataclass
class Calibration:
    """What calibration chose for one attack, on what, and what it cost."""

    attack: str
    params: Any  # the attack's parameter dataclass, tuned
    tuned: dict[str, Any]  # the tuned values (name -> value)
    default_psnr: float  # mean PSNR of the configured parameters on the cases
    best_psnr: float
    trials: list[dict] = field(default_factory=list)  # each: values, psnr
    cases: int = 0
    seconds: float = 0.0
    unmodelled: tuple[str, ...] = ()
    held_out: dict = field(default_factory=dict)  # the choice checked on fresh cases: per-case PSNRs, confirmed
    # (tuned values), and under 'iterations' the same for a longer iteration count

    def record(self) -> dict:
        """A plain record for the run directory."""
        return {"attack": self.attack, "tuned": self.tuned, "default_psnr": self.default_psnr,
                "best_psnr": self.best_psnr, "cases": self.cases, "seconds": round(self.seconds, 1),
                "unmodelled_defenses": list(self.unmodelled), "trials": self.trials, "held_out": self.held_out,
                "params": asdict(self.params)}


def _parametrization(space: dict[str, LogRange | Choice], start: dict[str, Any]):
    import nevergrad as ng

    dims = {}
    for name, dim in space.items():
        if isinstance(dim, LogRange):
            init = float(np.clip(start[name], dim.low, dim.high))
            dims[name] = ng.p.Log(init=init, lower=dim.low, upper=dim.high)
        else:
            dims[name] = ng.p.Choice(list(dim.options))
    return ng.p.Dict(**dims)


def evaluate(attack: str, params: Any, cases: list[tuple[Observation, Truth]], ctx: AttackContext,
             success_ssim: float = 0.5, check: Callable[[], None] = lambda: None,
             errors: list[str] | None = None) -> list[float]:
    """PSNR of `attack` with `params` on each case (a failed case counts as 0 dB, and its reason
    goes to `errors`); `check` is called before each case (it raises to stop). An AttackFailure
    (the attack cannot handle this model or protocol) is raised: no setting would change it."""
    spec = ATTACKS.get(attack)
    values = []
    for i, (obs, truth) in enumerate(cases):
        check()
        try:
            rec: Reconstruction = spec(obs.to(ctx.device), params, replace(ctx, seed=ctx.seed + i))
            s = score(rec, truth, obs.data, success_ssim)
            values.append(float(s.psnr) if np.isfinite(s.psnr) else 0.0)
        except AttackFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - a setting that fails scores nothing
            values.append(0.0)
            if errors is not None:
                errors.append(f"{type(exc).__name__}: {first_line(exc)}")
    return values


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same setting (floats equal to a relative 1e-9)."""
    return a.keys() == b.keys() and all(
        np.isclose(a[k], b[k], rtol=1e-9, atol=0) if isinstance(a[k], float) and isinstance(b[k], float) else a[k] == b[k]
        for k in a)


TIE_DB = 0.05  # a difference this small is a tie: no image looks different, and no verdict moves


def better_on_mean(candidate: list[float], configured: list[float]) -> bool:
    """A mean PSNR over the cases at least TIE_DB above the configured values' (a smaller gain
    is a tie, which keeps the configured values, as a smaller loss on one case is a tie)."""
    return float(np.mean(candidate)) - float(np.mean(configured)) >= TIE_DB


def dominates(candidate: list[float], configured: list[float]) -> bool:
    """At least as good as the configured values on every case (a loss under TIE_DB is a tie)
    and better on the mean."""
    return better_on_mean(candidate, configured) and all(c > d - TIE_DB for c, d in zip(candidate, configured))


def gain_lower_bound(candidate: list[float], configured: list[float], confidence: float = 0.95) -> float:
    """The one-sided Student-t lower confidence bound on the mean paired gain of `candidate`
    over `configured` (per case, in dB); -inf with fewer than three cases, where the bound
    says nothing, and the mean gain itself where every gain is the same."""
    gains = np.asarray(candidate, dtype=float) - np.asarray(configured, dtype=float)
    if len(gains) < 3:
        return float("-inf")
    from scipy import stats

    spread = float(gains.std(ddof=1)) / np.sqrt(len(gains))
    return float(gains.mean() - stats.t.ppf(confidence, len(gains) - 1) * spread)


def improves(candidate: list[float], configured: list[float]) -> bool:
    """The candidate beats the configured values: it `dominates` them, or its mean paired gain
    is above zero at 95% confidence (`gain_lower_bound`, three cases or more) and no tie."""
    return dominates(candidate, configured) or (better_on_mean(candidate, configured)
                                                 and gain_lower_bound(candidate, configured) > 0)


def calibrate(attack: str, params: Any, cases: CalibrationCases, *, budget: int, ctx: AttackContext,
              held_out: CalibrationCases | None = None, on_trial: Callable[[dict, float], None] | None = None,
              check: Callable[[], None] = lambda: None, iteration_factor: int = 1, restart_factor: int = 1,
              job_seconds: float = 0.0) -> Calibration:
    """Tune `attack`'s registered `tunable` hyperparameters on simulated cases with nevergrad's NGOpt,
    `budget` evaluations in all, the configured `params` first. Returns the best mean among the
    candidates that beat the configured values (`improves`), or the configured values; with
    `held_out` cases, the best only where it beats the configured values on those as well.
    Then its on/off settings are tried flipped (`choose_switches`). Then, for an attack with
    `iterations` and an `iteration_factor` above 1, the iterations double, up to that factor
    times the configured count and within half of `job_seconds` per run (0: no limit), each
    count judged against the configured one (`stretch`); then, with a `restart_factor` above 1,
    the restarts likewise. With `held_out` cases, a larger budget is kept only where it wins on
    those as well. `check` is called before every attack run and raises to stop the calibration
    (a run's stop request)."""
    t0 = time.perf_counter()
    space = {k: v for k, v in tunable(attack).items() if k in {f.name for f in fields(params)}}
    start = {k: getattr(params, k) for k in space}
    errors: list[str] = []
    per_case = evaluate(attack, params, cases.cases, ctx, check=check, errors=errors)
    if per_case and len(errors) == len(per_case):
        raise AttackFailure(f"with its configured parameters it failed on every simulated update ({errors[0]})")
    base = float(np.mean(per_case)) if per_case else float("nan")
    trials = [{"values": start, "psnr": round(base, 3), "per_case": [round(v, 3) for v in per_case]}]
    if on_trial is not None:
        on_trial({}, base)  # the configured values: the first of the budget's settings
    best_values, best, best_cases = dict(start), base, per_case
    if space and budget > 1:
        import nevergrad as ng

        param = _parametrization(space, start)
        param.random_state = np.random.RandomState(ctx.seed % (2**32))
        # one ask to spare: NGOpt's continuous stages often propose the starting point first,
        # which is scored already and costs nothing the second time
        opt = ng.optimizers.NGOpt(parametrization=param, budget=budget)
        with blas_single_thread(), warnings.catch_warnings():
            # NGOpt's COBYLA stage complains about its own small budgets; nothing a user can act on
            warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
            for _ in range(budget):
                if len(trials) >= budget:
                    break
                cand = opt.ask()
                values = {k: (float(v) if isinstance(space[k], LogRange) else v) for k, v in cand.value.items()}
                known = next((t for t in trials if _same(t["values"], values)), None)
                if known is not None:
                    opt.tell(cand, -known["psnr"])
                    continue
                found = evaluate(attack, replace(params, **values), cases.cases, ctx, check=check)
                psnr = float(np.mean(found)) if found else float("nan")
                opt.tell(cand, -psnr)
                wins = improves(found, per_case)
                trials.append({"values": values, "psnr": round(psnr, 3), "per_case": [round(v, 3) for v in found],
                               "improves": wins})
                if on_trial is not None:
                    on_trial(values, psnr)
                if psnr > best and wins:
                    best, best_values, best_cases = psnr, values, found
    confirmation: dict = {}
    fresh = held_out is not None and bool(held_out.cases)
    reference: list[float] | None = None  # the fresh cases' PSNRs of the values chosen so far
    if fresh and best > base:
        configured = evaluate(attack, params, held_out.cases, ctx, check=check)
        chosen = evaluate(attack, replace(params, **best_values), held_out.cases, ctx, check=check)
        confirmation = {"cases": len(held_out.cases), "configured": [round(v, 3) for v in configured],
                        "chosen": [round(v, 3) for v in chosen], "confirmed": improves(chosen, configured)}
        reference = chosen if confirmation["confirmed"] else configured
        if not confirmation["confirmed"]:
            best_values, best, best_cases = dict(start), base, per_case
    tuned_values = best_values if best > base else {}
    tuned = replace(params, **best_values)
    flipped, flipped_cases, reference = choose_switches(
        attack, tuned, best_cases, cases, held_out if fresh else None, ctx, trials=trials, confirmation=confirmation,
        reference=reference, check=check, on_trial=on_trial)
    if flipped:
        tuned, best_cases = replace(tuned, **flipped), flipped_cases
        best, tuned_values = float(np.mean(best_cases)), {**tuned_values, **flipped}
    for key, factor in zip(STRETCHED, (iteration_factor, restart_factor)):
        given = tuned
        tuned, stretched = stretch(attack, given, key, best_cases, cases, ctx, factor=factor, trials=trials,
                                   check=check, on_trial=on_trial, job_seconds=job_seconds)
        if stretched and fresh:  # the larger budget, too, is used only where it wins on the fresh cases
            reference, larger = on_fresh(attack, given, tuned, held_out, ctx, reference=reference, check=check)
            confirmation = {"cases": len(held_out.cases), **confirmation,
                            key: {"count": getattr(tuned, key), "given": [round(v, 3) for v in reference],
                                  "larger": [round(v, 3) for v in larger], "confirmed": improves(larger, reference)}}
            if confirmation[key]["confirmed"]:
                reference = larger
            else:
                tuned, stretched = given, []
        if stretched:
            best, best_cases = float(np.mean(stretched)), stretched
            tuned_values = {**tuned_values, key: getattr(tuned, key)}
    tuned, shrunk = choose_shrink(attack, tuned, cases, held_out if fresh else None, ctx, trials=trials,
                                  confirmation=confirmation, check=check)
    if shrunk:
        best = float(np.mean(shrunk))
        tuned_values = {**tuned_values, "shrink": tuned.shrink}
    return Calibration(attack=attack, params=tuned, tuned=tuned_values, default_psnr=base,
                       best_psnr=best, trials=trials, cases=len(cases.cases), seconds=time.perf_counter() - t0,
                       unmodelled=cases.unmodelled, held_out=confirmation)


def switches(attack: str) -> list[str]:
    """The on/off settings (SWITCHES) `attack`'s parameters have, which calibration tries flipped."""
    names = {f.name for f in fields(ATTACKS.get(attack).params)}
    return [k for k in SWITCHES if k in names]


def calibrated_settings(attack: str) -> list[str]:
    """Every setting of `attack` calibration may change, in the order it does: the tuned
    hyperparameters, the on/off settings it tries flipped, the budgets it may stretch and the
    shrink toward grey it picks last (none where the attack registered nothing to tune)."""
    if not tunable(attack):
        return []
    names = {f.name for f in fields(ATTACKS.get(attack).params)}
    return [*tunable(attack), *switches(attack), *(k for k in STRETCHED if k in names),
            *(["shrink"] if "shrink" in names else [])]


def on_fresh(attack: str, given: Any, candidate: Any, held_out: CalibrationCases, ctx: AttackContext, *,
             reference: list[float] | None, check: Callable[[], None] = lambda: None
             ) -> tuple[list[float], list[float]]:
    """PSNRs on the `held_out` cases of the parameters `given` (`reference`, where measured
    already) and of a `candidate` that is to beat them there."""
    if reference is None:
        reference = evaluate(attack, given, held_out.cases, ctx, check=check)
    return reference, evaluate(attack, candidate, held_out.cases, ctx, check=check)


def choose_switches(attack: str, params: Any, scores: list[float], cases: CalibrationCases,
                    held_out: CalibrationCases | None, ctx: AttackContext, *, trials: list[dict], confirmation: dict,
                    reference: list[float] | None, check: Callable[[], None] = lambda: None,
                    on_trial: Callable[[dict, float], None] | None = None
                    ) -> tuple[dict[str, bool], list[float], list[float] | None]:
    """The attack's on/off settings (`switches`), each tried flipped from `params` (whose
    per-case PSNRs are `scores`): a structural choice the tuner's few trials would rarely reach
    (invgrad's `rebalance` gains on a ReLU CNN over several images and steps, and loses on a
    sigmoid LeNet). Without `held_out` cases, a flip is kept where it `improves` on the cases.
    With them, a flip whose mean is better on the cases goes on to the fresh ones and is kept
    where it `improves` there (against `reference`, their PSNRs at `params`, measured here if
    None; recorded in `confirmation[key]`): a flip is one fixed alternative, not the best of a
    search, so its mean on the cases is not flattered by a choice among many, and the fresh
    cases are the judge that guards against noise (asking both to be won outright, on two
    cases of a few images each, turned down flips worth 2 dB on the victims). Returns the flips
    kept, the per-case PSNRs with them, and the held-out PSNRs of the settings chosen (None if
    never measured)."""
    kept: dict[str, bool] = {}
    confirm = held_out is not None and bool(held_out.cases)
    for key in switches(attack):
        given = replace(params, **kept)
        flipped = replace(given, **{key: not getattr(params, key)})
        found = evaluate(attack, flipped, cases.cases, ctx, check=check)
        wins = improves(found, scores)
        trials.append({"values": {key: getattr(flipped, key)}, "psnr": round(float(np.mean(found)), 3),
                       "per_case": [round(v, 3) for v in found], "improves": wins})
        if on_trial is not None:
            on_trial({key: getattr(flipped, key)}, float(np.mean(found)))
        # with fresh cases to settle it, a better mean here is enough to put a flip to them
        if not (better_on_mean(found, scores) if confirm else wins):
            continue
        if confirm:
            reference, fresh = on_fresh(attack, given, flipped, held_out, ctx, reference=reference, check=check)
            confirmed = improves(fresh, reference)
            confirmation.setdefault("cases", len(held_out.cases))
            confirmation[key] = {"value": getattr(flipped, key), "given": [round(v, 3) for v in reference],
                                 "chosen": [round(v, 3) for v in fresh], "confirmed": confirmed}
            if not confirmed:
                continue
            reference = fresh
        kept, scores = {**kept, key: getattr(flipped, key)}, found
    return kept, scores, reference


SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 0.9)  # an output keeps a tenth of its detail: the report still shows it


def shrink_scores(attack: str, params: Any, cases: list[tuple[Observation, Truth]], ctx: AttackContext,
                  grid: tuple[float, ...] = SHRINK_GRID, check: Callable[[], None] = lambda: None
                  ) -> dict[float, list[float]]:
    """Per shrink amount in `grid`, the PSNR on each case of `attack`'s output shrunk by it
    (fedattack.attacks.optimize.shrink; to 1/1000 dB): one attack run per case, scored at every amount."""
    spec = ATTACKS.get(attack)
    out: dict[float, list[float]] = {a: [] for a in grid}
    for i, (obs, truth) in enumerate(cases):
        check()
        try:
            rec: Reconstruction = spec(obs.to(ctx.device), replace(params, shrink=0.0), replace(ctx, seed=ctx.seed + i))
        except Exception:  # noqa: BLE001 - a run that fails scores nothing at any amount
            rec = None
        for a in grid:
            if rec is None or rec.images is None:
                out[a].append(0.0)
                continue
            s = score(replace(rec, images=shrink(rec.images, a, obs.data)), truth, obs.data)
            out[a].append(round(float(s.psnr), 3) if np.isfinite(s.psnr) else 0.0)  # float noise is no gain
    return out


def choose_shrink(attack: str, params: Any, cases: CalibrationCases, held_out: CalibrationCases | None,
                  ctx: AttackContext, *, trials: list[dict], confirmation: dict,
                  check: Callable[[], None] = lambda: None) -> tuple[Any, list[float]]:
    """How far to pull the attack's output toward each image's mean grey (its `shrink`), for
    attacks that have one: the amount with the best mean PSNR on the cases, kept where it
    `improves` on the configured amount there and, with `held_out` cases, on those as well
    (recorded in `confirmation['shrink']`). The amount costs no extra attack runs per value:
    one run per case is scored at every amount of SHRINK_GRID. It gains where reconstructions'
    detail is mostly wrong (many images per update, few update entries per pixel) and keeps 0
    where the detail is right. Returns the parameters and, where they changed, their per-case
    PSNRs (else [])."""
    if not hasattr(params, "shrink") or not cases.cases:
        return params, []
    grid = tuple(sorted({*SHRINK_GRID, params.shrink}))
    found = shrink_scores(attack, params, cases.cases, ctx, grid, check)
    chosen = max(grid, key=lambda a: (float(np.mean(found[a])), -abs(a - params.shrink)))
    wins = chosen != params.shrink and improves(found[chosen], found[params.shrink])
    trials.append({"values": {"shrink": chosen}, "psnr": round(float(np.mean(found[chosen])), 3),
                   "per_case": [round(v, 3) for v in found[chosen]], "improves": wins,
                   "by_amount": {str(a): round(float(np.mean(v)), 3) for a, v in found.items()}})
    if not wins:
        return params, []
    if held_out is not None and held_out.cases:
        fresh = shrink_scores(attack, params, held_out.cases, ctx, (params.shrink, chosen), check)
        confirmed = improves(fresh[chosen], fresh[params.shrink])
        confirmation.setdefault("cases", len(held_out.cases))
        confirmation["shrink"] = {"amount": chosen, "configured": [round(v, 3) for v in fresh[params.shrink]],
                                  "chosen": [round(v, 3) for v in fresh[chosen]], "confirmed": confirmed}
        if not confirmed:
            return params, []
    return replace(params, shrink=chosen), found[chosen]


def stretch(attack: str, params: Any, key: str, scores: list[float], cases: CalibrationCases, ctx: AttackContext,
            *, factor: int, trials: list[dict], check: Callable[[], None] = lambda: None,
            on_trial: Callable[[dict, float], None] | None = None, job_seconds: float = 0.0
            ) -> tuple[Any, list[float]]:
    """An attack's budget, the other lever beside its hyperparameters: `key` is `iterations` or
    `restarts`. An optimization attack stopped early leaves images it would recover with more
    steps (on Flower's quickstart CNN, one image, `invgrad` gains about 3 dB from 1000 to 4000
    iterations), and a run that ends in a poor basin is saved by another start; how much of
    either pays depends on the model and the protocol. Doubles `params.<key>` up to `factor`
    times the value given, while each doubling raises the mean PSNR on the cases, and keeps the
    value with the best mean among those that `improve` on the value given (`scores`: its
    per-case PSNRs). Each step's gain is small beside one image's swings (1000 to 2000
    iterations on the quickstart CNN: +0.25 dB mean over 8 single-image cases, one of them
    -2.8 dB), so each value is judged against the value given, not the step before. A value
    whose runs take more than half of `job_seconds` (the audit's job time-out; 0: none) is not
    chosen, and no larger value is tried once one would (twice the last value's time): a
    stretched attack must still finish its real jobs. Each doubling tried is appended to `trials`
    (and passed to `on_trial`). Returns the parameters and, where they changed, their per-case
    PSNRs (else [])."""
    if factor <= 1 or not hasattr(params, key) or not scores:
        return params, []
    cap, larger, last = getattr(params, key) * factor, params, float(np.mean(scores))
    best, kept, seconds = params, [], 0.0
    limit = job_seconds / 2 if job_seconds > 0 else float("inf")
    while getattr(larger, key) * 2 <= cap and 2 * seconds <= limit:
        larger = replace(larger, **{key: getattr(larger, key) * 2})
        t0 = time.perf_counter()
        found = evaluate(attack, larger, cases.cases, ctx, check=check)
        seconds = (time.perf_counter() - t0) / len(cases.cases)
        mean, wins = float(np.mean(found)), improves(found, scores) and seconds <= limit
        trials.append({"values": {key: getattr(larger, key)}, "psnr": round(mean, 3),
                       "per_case": [round(v, 3) for v in found], "improves": wins,
                       "seconds_per_case": round(seconds, 3)})
        if on_trial is not None:
            on_trial({key: getattr(larger, key)}, mean)
        if wins and (not kept or mean > float(np.mean(kept))):
            best, kept = larger, found
        if mean <= last:
            break
        last = mean
    return best, kept


def size_band(n: int | None) -> int:
    """The power-of-two band of a client's example count: 1, 2, 3-4, 5-8, 9-16, ... -> 0, 1, 2, 3, 4, ..."""
    return max(0, int(n or 0) - 1).bit_length()


def band_words(n: int | None) -> str:
    """The band of `size_band(n)` in words: '1 example', '2 examples', '5-8 examples'."""
    band = size_band(n)
    return counted(band + 1, "example") if band < 2 else f"{2 ** (band - 1) + 1}-{2 ** band} examples"


def calibration_key(attack: str, obs: Observation, adaptive: bool) -> tuple:
    """What a calibration depends on: the attack, the model, the protocol, the defenses and the
    band of the client's example count (`size_band`: on a non-IID split every client holds a
    different number, and a calibration per count would repeat for almost every client);
    later rounds and clients with the same key reuse it."""
    p = obs.protocol
    return (attack, adaptive, obs.model, obs.data.shape, p.lr, p.local_steps, p.local_epochs, p.batch_size,
            size_band(p.num_examples), p.momentum, p.optimizer, p.weight_decay, p.nesterov, p.proximal_mu,
            tuple((d.name, tuple(sorted(d.params.items()))) for d in p.defenses))
