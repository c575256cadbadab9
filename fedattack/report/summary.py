"""The summary of a run: per attack, means over its jobs; per run, training totals.

Computed from typed results (the run's own, in memory, or a run directory's, read back);
summary.json is its output.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from fedattack.results import Interruption, JobResult, RoundResult, RunHeader


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return round(float(np.mean(xs)), 4) if xs else None


@dataclass(frozen=True)
class AttackSummary:
    jobs: int
    failed: int  # jobs without a reconstruction (status failed or error)
    psnr: float | None  # means over the jobs that reconstructed (None: none did)
    ssim: float | None
    mse: float | None
    label_acc: float | None
    success_rate: float | None
    seconds: float | None  # mean over every job
    scope: list[str]


@dataclass(frozen=True)
class Summary:
    header: RunHeader
    attacks: dict[str, AttackSummary]  # by attack label ("invgrad", "invgrad (adaptive)")
    rounds: int
    final_test_acc: float | None
    client_errors: int
    defense: str | None
    epsilon: float | None  # the largest DP epsilon any round reported
    interrupted: Interruption | None = None  # why the run stopped early (None: it finished)

    def to_dict(self) -> dict:
        """summary.json's layout."""
        return {"epsilon": self.epsilon, "attacks": {k: asdict(v) for k, v in self.attacks.items()},
                "rounds": self.rounds, "final_test_acc": self.final_test_acc, "client_errors": self.client_errors,
                "defense": self.defense, **asdict(self.header),
                "interrupted": self.interrupted.to_dict() if self.interrupted else None}


def summarize(results: list[JobResult], rounds: list[RoundResult], header: RunHeader,
              interrupted: Interruption | None = None) -> Summary:
    """Per-attack means over all results, plus training totals."""
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
            seconds=_mean([r.seconds for r in rows]), scope=sorted({r.scope for r in rows}))
    eps = [r.epsilon for r in rounds if not math.isnan(r.epsilon)]
    return Summary(header=header, attacks=attacks, rounds=len([r for r in rounds if r.round > 0]),
                   final_test_acc=rounds[-1].test_acc if rounds else None,
                   client_errors=sum(r.errors for r in rounds), defense=results[0].defense if results else None,
                   epsilon=max(eps) if eps else None, interrupted=interrupted)
