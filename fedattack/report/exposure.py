"""Exposure over rounds: what a server that keeps every update has recovered so far.

The same private images are trained on in many rounds, and each audited update is attacked
by every configured attack. Per training sample (dataset index) the best reconstruction over
all rounds and attacks counts; per client, the share of its training data recovered in the
updates of rounds 1..r; per run (client "all"), the share of every client's data.

A sample is recovered once any attack recovered it in any update (the rule of
fedattack.metrics.score: SSIM threshold, above the flat guess, in a row whose PSNR beats its
flat-image baseline by the margin). `exposure.csv` holds one row per round and client plus
one "all" row per round; the report's headline reads its last "all" row.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping

import numpy as np

from fedattack.results import NAN, ExposureRow, ImageRow, JobResult

ALL = "all"


def image_rows(res: JobResult, owners: Mapping[int, int | str]) -> list[ImageRow]:
    """The per-image rows of a scored result (none for failed jobs or label-only attacks)."""
    s = res.score.per_image
    if not res.ok or s is None:
        return []
    out = []
    for k in range(len(s.psnr)):
        index = int(s.index[k])
        owner = s.owner[k] if s.owner else owners.get(index, res.client if index >= 0 else "")
        out.append(ImageRow(round=int(res.round), client=res.client, attack=res.attack, adaptive=res.adaptive,
                            position=k, index=index, owner=owner,
                            psnr=round(float(s.psnr[k]), 2), ssim=round(float(s.ssim[k]), 4),
                            baseline_psnr=round(float(s.baseline_psnr[k]), 2),
                            baseline_ssim=round(float(s.baseline_ssim[k]), 4),
                            lpips=NAN if math.isnan(s.lpips[k]) else round(float(s.lpips[k]), 4),
                            recovered=bool(s.recovered[k])))
    return out


def better(a: ImageRow, b: ImageRow | None) -> bool:
    """Whether reconstruction `a` of a sample beats `b`: recovered first, then SSIM, then PSNR; on
    equal scores (two exact recoveries) the earlier round, then the attack first by name, plain
    before adaptive: never the one whose job happened to finish first."""
    if b is None:
        return True
    scores_a, scores_b = (a.recovered, a.ssim, a.psnr), (b.recovered, b.ssim, b.psnr)
    if scores_a != scores_b:
        return scores_a > scores_b
    return (a.round, a.attack, a.adaptive, str(a.client), a.position) < (b.round, b.attack, b.adaptive, str(b.client),
                                                                          b.position)


def best_per_sample(images: Iterable[ImageRow]) -> dict[int, ImageRow]:
    """Per dataset index, its best reconstruction over every round and attack."""
    best: dict[int, ImageRow] = {}
    for r in images:
        if r.index >= 0 and better(r, best.get(r.index)):
            best[r.index] = r
    return best


def exposure(images: Iterable[ImageRow], sizes: Mapping[int | str, int], rounds: Iterable[int]) -> list[ExposureRow]:
    """Per round (every round in `rounds` and every round with images) and client (every client
    in `sizes`, then "all"): cumulative audited and recovered samples and the best SSIM so far.
    No rows where neither the clients' sizes nor any sample's dataset index is known (an app's own
    loader records images alone): a sample audited in two rounds could not be counted once."""
    images = list(images)
    if not sizes and not any(r.index >= 0 for r in images):
        return []
    first_seen: dict[int, int] = {}
    first_recovered: dict[int, int] = {}
    owner: dict[int, int | str] = {}
    best_ssim: dict[tuple[int | str, int], float] = {}  # (owner, round) -> best SSIM in that round
    for r in images:
        if r.index < 0:
            continue
        owner[r.index] = r.owner
        first_seen[r.index] = min(first_seen.get(r.index, r.round), r.round)
        if r.recovered:
            first_recovered[r.index] = min(first_recovered.get(r.index, r.round), r.round)
        if not math.isnan(r.ssim):
            key = (r.owner, r.round)
            best_ssim[key] = max(best_ssim.get(key, -1.0), r.ssim)
    all_rounds = sorted({int(x) for x in rounds} | set(first_seen.values()))
    clients = list(sizes)
    seen_by: dict[int | str, list[int]] = {c: [] for c in clients}
    rec_by: dict[int | str, list[int]] = {c: [] for c in clients}
    for i, rnd in first_seen.items():
        seen_by.setdefault(owner[i], []).append(rnd)
    for i, rnd in first_recovered.items():
        rec_by.setdefault(owner[i], []).append(rnd)
    for lists in (seen_by, rec_by):
        for v in lists.values():
            v.sort()
    all_seen, all_rec = sorted(first_seen.values()), sorted(first_recovered.values())
    out: list[ExposureRow] = []
    running = {c: NAN for c in clients}
    total = int(sum(sizes.values()))
    for rnd in all_rounds:
        for c in clients:
            b = best_ssim.get((c, rnd))
            if b is not None:
                running[c] = b if math.isnan(running[c]) else max(running[c], b)
            out.append(ExposureRow(round=rnd, client=c, samples=int(sizes[c]), audited=bisect_right(seen_by[c], rnd),
                                   recovered=bisect_right(rec_by[c], rnd), best_ssim=running[c]))
        known = [v for v in running.values() if not math.isnan(v)]
        out.append(ExposureRow(round=rnd, client=ALL, samples=total, audited=bisect_right(all_seen, rnd),
                               recovered=bisect_right(all_rec, rnd), best_ssim=max(known) if known else NAN))
    return out


def final(rows: list[ExposureRow]) -> dict[int | str, ExposureRow]:
    """Each client's (and "all"'s) row of the last round."""
    last = max((r.round for r in rows), default=None)
    return {r.client: r for r in rows if r.round == last}


def worst_clients(rows: list[ExposureRow]) -> list[ExposureRow]:
    """The last round's client rows, most exposed first (share, then best SSIM)."""
    end = [r for c, r in final(rows).items() if c != ALL]
    return sorted(end, key=lambda r: (-(r.share if not math.isnan(r.share) else -1),
                                      -(r.best_ssim if not math.isnan(r.best_ssim) else -2), str(r.client)))


def owners_of(partitions: Mapping[int | str, Iterable[int]]) -> tuple[dict[int, int | str], dict[int | str, int]]:
    """(dataset index -> client, client -> number of samples) from each client's indices."""
    owners: dict[int, int | str] = {}
    sizes: dict[int | str, int] = {}
    for c, idx in partitions.items():
        idx = np.asarray(list(idx), dtype=np.int64)
        sizes[c] = int(len(idx))
        for i in idx:
            owners.setdefault(int(i), c)
    return owners, sizes
