"""The summary of a run: the headline (what leaked), per attack means beside the flat-image
baseline, per run training totals.

Computed from typed results (the run's own, in memory, or a run directory's, read back);
summary.json is its output. The headline's exposed share is the last "all" row of the
run's exposure (exposure.csv), computed from the same image rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from fedattack.attacks.scope import client_only, idle_attacks, needs_words, sum_attacks
from fedattack.defenses import secure_aggregation
from fedattack.report.exposure import ALL, exposure, final, worst_clients
from fedattack.results import ExposureRow, ImageRow, Interruption, JobResult, RoundResult, RunHeader
from fedattack.text import plural


def run_header(raw: dict) -> RunHeader:
    """The header of a run whose config is `raw` (Config.to_dict(), or a run directory's
    config.yaml), its budgets those of the attacks that ran in its scope (sums of updates only
    under `client.defenses=[secagg]`, or in an app's record with `server.sees: sums`)."""
    audit, client = raw.get("audit") or {}, raw.get("client") or {}
    attacks = [str(a) for a in audit.get("attacks") or ()]
    sums = (raw.get("server") or {}).get("sees") == "sums"  # an app audited under SecAgg+
    return RunHeader.from_config(raw, idle=client_only(attacks) if sums else
                                 idle_attacks(attacks, [str(d) for d in client.get("defenses") or ()]))


def _mean(xs: list[float], digits: int = 4) -> float | None:
    """The mean, rounded; exactly summed (math.fsum), so the order in which jobs finished cannot
    move it across a rounding boundary between two runs of one config."""
    xs = [x for x in xs if not math.isnan(x)]
    return round(math.fsum(xs) / len(xs), digits) if xs else None


@dataclass(frozen=True)
class AttackSummary:
    jobs: int
    failed: int  # jobs without a reconstruction (status failed or error)
    psnr: float | None  # means over the jobs that reconstructed (None: none did)
    ssim: float | None
    mse: float | None
    label_acc: float | None
    success_rate: float | None  # share of its scored updates in which it recovered at least one image
    seconds: float | None  # mean over every job
    scope: list[str]
    baseline_psnr: float | None = None  # the flat-image baseline on the same images, averaged the same way
    baseline_ssim: float | None = None
    margin: float | None = None  # mean PSNR margin over the baseline (dB)
    lpips: float | None = None
    leaked: int = 0  # updates in which it recovered at least one image
    recovered: int = 0  # images it recovered, over all its jobs
    images: int = 0  # images in the updates it scored


@dataclass(frozen=True)
class Headline:
    """What leaked, at a glance."""

    audited_updates: int  # distinct (round, client) updates at least one attack scored
    leaked_updates: int  # of those, updates in which some attack recovered an image
    samples: int  # training samples of every client
    audited_samples: int  # distinct samples in audited updates
    exposed_samples: int  # distinct samples recovered by any attack in any round
    exposed_share: float | None  # exposed_samples / samples: exposure.csv's last "all" row
    strongest_attack: str | None  # most updates leaked, then the largest PSNR margin
    worst_client: int | str | None  # the most exposed client (share, then best SSIM)
    worst_client_recovered: int = 0
    worst_client_samples: int = 0


@dataclass(frozen=True)
class Summary:
    header: RunHeader
    attacks: dict[str, AttackSummary]  # by attack label ("invgrad", "invgrad (adaptive)")
    rounds: int
    final_test_acc: float | None
    client_errors: int
    defense: str | None
    epsilon: float | None  # the largest DP epsilon any round reported
    headline: Headline | None = None
    interrupted: Interruption | None = None  # why the run stopped early (None: it finished)
    lpips_note: str = ""  # why no LPIPS column ("" where it was computed or nothing was scored)
    client_error: str = ""  # the first client error's reason ("" where none failed)
    exposure: list[ExposureRow] = field(default_factory=list, compare=True, repr=False)

    def to_dict(self) -> dict:
        """summary.json's layout."""
        return {"interrupted": self.interrupted.to_dict() if self.interrupted else None, "headline": asdict(self.headline) if self.headline else None,
                "epsilon": self.epsilon, "attacks": {k: asdict(v) for k, v in self.attacks.items()},
                "rounds": self.rounds, "final_test_acc": self.final_test_acc, "client_errors": self.client_errors,
                "client_error": self.client_error,
                "defense": self.defense, "lpips_note": self.lpips_note,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.header).items()}}


def ran_budgets(summary: Summary) -> tuple[str, ...]:
    """The run's budgets (`RunHeader.budgets`) of the attacks that scored at least one update:
    one that failed, or was stopped, on every job tried nothing at its budget."""
    scored = {name.removesuffix(" (adaptive)") for name, a in summary.attacks.items() if a.jobs > a.failed}
    return tuple(b for b in summary.header.budgets if b.split(" ", 1)[0] in scored)


def failed_everywhere(summary: Summary) -> list[str]:
    """The attacks whose every job failed: a run's 'nothing leaked' says nothing of them."""
    return [name for name, a in summary.attacks.items() if a.jobs and a.failed == a.jobs]


def failed_caveat(summary: Summary) -> str:
    """Said beside the headline where some attacks failed on every job ("" where none did)."""
    names = failed_everywhere(summary)
    if not names:
        return ""
    listed = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return (f"Every job of {listed} failed: {'they measure' if len(names) > 1 else 'it measures'} nothing in this run "
            "(leakage.csv gives each reason).")


def budget_caveat(header: RunHeader, summary: Summary | None = None) -> str:
    """What a run in which no attack recovered an image does not prove: the attacks ran at their
    configured budgets (or the counts calibration chose), and the papers' own code runs
    optimization attacks several times longer. With `summary`: the budgets of the attacks that
    scored an update only."""
    budgets = header.budgets if summary is None else ran_budgets(summary)
    chosen = (f", except where calibration raised them: {', '.join(header.raised)} (calibration.json)"
              if header.raised else
              ", or at the counts calibration chose where it raised them (calibration.json)"
              if header.calibrate and header.raised is None else "")
    return (f"The attacks ran at their configured budgets ({', '.join(budgets)}){chosen}; more iterations, "
            "or more restarts where an optimization stalls at a high mismatch (as L-BFGS can in DLG's setting), "
            "can recover more (docs/attacks.md: the iteration budget).")


def raised_budgets(records: list, raw: dict) -> tuple[str, ...]:
    """The iteration and restart budgets calibration raised above the configured ones
    (calibration.json's `records`, the run's config `raw`), the largest per attack, in words."""
    most: dict[str, dict[str, int]] = {}
    for r in records:
        if not isinstance(r, dict) or r.get("skipped"):
            continue
        attack = str(r.get("attack", ""))
        for budget in ("iterations", "restarts"):
            chosen = (r.get("params") or {}).get(budget)
            configured = (raw.get(attack) or {}).get(budget) if isinstance(raw.get(attack), dict) else None
            if isinstance(chosen, int) and isinstance(configured, int) and chosen > configured:
                raised = most.setdefault(attack, {})
                raised[budget] = max(raised.get(budget, 0), chosen)
    return tuple(f"{a} to {' and '.join(f'{n} {b}' for b, n in raised.items())}" for a, raised in most.items())


def sums_only(summary: Summary) -> bool:
    """Whether the server saw only sums of updates (SecAgg+): by the defense in force, or by the
    scope its attacks ran in, or by what an app's record says (it records no client.defenses)."""
    return (summary.header.sums or secure_aggregation(summary.header.defenses) is not None
            or any("aggregate" in a.scope for a in summary.attacks.values()))


def secagg_scope(idle: Sequence[str], running: Sequence[str], key: str = "audit.attacks") -> str:
    """What a SecAgg+ run attacks, in words: the server holds each round's sum of updates only,
    so the attacks that need one client's update (`idle`) have nothing to attack; `running` are
    the ones that attack the sum. Where none does, which attack could (added to `key`)."""
    text = "Under SecAgg+ the server sees each round's sum of updates, never one client's"
    parts = []
    if idle:
        one = len(idle) == 1
        parts.append(f"{', '.join(idle)} {'does' if one else 'do'} not run ({'it needs' if one else 'each needs'} "
                     "one client's update)")
    if running:
        parts.append(f"{', '.join(running)} {plural(len(running), 'attacks', 'attack')} the sum")
    else:
        hint = sum_attacks()
        add = f" (add {' or '.join(hint)} to {key}{needs_words(hint)})" if hint else ""
        parts.append(f"no configured attack runs on the sum{add}")
    return f"{text}: {'; '.join(parts)}."


def batch_norm_caveat(header: RunHeader) -> str:
    """What a run on a model that trains BatchNorm does not prove ("" for other models, and for
    runs without an optimization attack: those with an iteration budget)."""
    if not header.batch_norm or not header.budgets:
        return ""
    return ("The model trains BatchNorm layers on each batch's statistics, which leaves optimization attacks "
            "coarse on small batches: read these scores as a lower bound on what leaks (docs/attacks.md: "
            "why BatchNorm models stay coarse).")


def headline(results: list[JobResult], rows: list[ExposureRow]) -> Headline:
    scored = {(r.round, r.client) for r in results if r.ok and r.scored}
    leaked = {(r.round, r.client) for r in results if r.success}
    end = final(rows)
    everyone = end.get(ALL)
    by_attack: dict[str, list[JobResult]] = defaultdict(list)
    for r in results:
        if r.ok:
            by_attack[r.label].append(r)

    def strength(name: str) -> tuple:
        rs = by_attack[name]
        margin = _mean([r.score.margin for r in rs])
        return (sum(r.success for r in rs), margin if margin is not None else -math.inf)

    strongest = max(sorted(by_attack), key=strength, default=None)
    worst = next(iter(worst_clients(rows)), None)
    if worst is not None and worst.recovered == 0 and math.isnan(worst.best_ssim):
        worst = None  # nothing of anyone was even scored
    return Headline(audited_updates=len(scored), leaked_updates=len(leaked),
                    samples=everyone.samples if everyone else 0, audited_samples=everyone.audited if everyone else 0,
                    exposed_samples=everyone.recovered if everyone else 0,
                    exposed_share=round(everyone.share, 4) if everyone and everyone.samples else None,
                    strongest_attack=strongest, worst_client=worst.client if worst else None,
                    worst_client_recovered=worst.recovered if worst else 0,
                    worst_client_samples=worst.samples if worst else 0)


def summarize(results: list[JobResult], rounds: list[RoundResult], header: RunHeader, *,
              images: list[ImageRow] | None = None, sizes: dict | None = None,
              interrupted: Interruption | None = None,
              lpips_note: str = "") -> Summary:
    """Per-attack means over all results, the headline and the exposure, plus training totals."""
    by_attack: dict[str, list[JobResult]] = defaultdict(list)
    for r in results:
        by_attack[r.label].append(r)
    attacks = {}
    for name, rows in sorted(by_attack.items()):
        ok = [r for r in rows if r.ok]
        attacks[name] = AttackSummary(
            jobs=len(rows), failed=len(rows) - len(ok),
            psnr=_mean([r.score.psnr for r in ok]), ssim=_mean([r.score.ssim for r in ok]),
            mse=_mean([r.score.mse for r in ok]), label_acc=_mean([r.score.label_acc for r in ok]),
            success_rate=_mean([1.0 if r.success else 0.0 for r in ok if r.scored]),
            seconds=_mean([r.seconds for r in rows]), scope=sorted({r.scope for r in rows}),
            baseline_psnr=_mean([r.score.baseline_psnr for r in ok]),
            baseline_ssim=_mean([r.score.baseline_ssim for r in ok]), margin=_mean([r.score.margin for r in ok], 2),
            lpips=_mean([r.score.lpips for r in ok]), leaked=sum(r.success for r in ok),
            recovered=sum(r.score.recovered for r in ok),
            images=sum(r.score.num_images for r in ok if not math.isnan(r.score.psnr)))
    eps = [r.epsilon for r in rounds if not math.isnan(r.epsilon)]
    rows = exposure(images or [], sizes or {}, [r.round for r in rounds if r.round > 0])
    has_lpips = any(not math.isnan(r.score.lpips) for r in results)
    scored_images = any(r.ok and not math.isnan(r.score.psnr) for r in results)
    accs = [r.test_acc for r in rounds if not math.isnan(r.test_acc)]
    return Summary(header=header, attacks=attacks, rounds=len([r for r in rounds if r.round > 0]),
                   final_test_acc=accs[-1] if accs else None,
                   client_errors=sum(r.errors for r in rounds), defense=header.defense,
                   epsilon=max(eps) if eps else None, headline=headline(results, rows), interrupted=interrupted,
                   lpips_note="" if has_lpips or not scored_images else lpips_note,
                   client_error=next((r.error for r in rounds if r.error), ""), exposure=rows)
