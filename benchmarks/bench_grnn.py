"""GRNN (Ren et al., ACM TIST 2022): a generator trained from scratch on one update.

DLG's setting (LeNet, sigmoid, weights U(-0.5, 0.5), as the authors' code initializes it),
lfw-subset, one local step over the client's batch. Rows: the authors' recipe (1000
RMSprop steps, L2 + Wasserstein + TV, generated soft labels) at 32 px for batches of 1 and
2, and variants, with mean PSNR / SSIM / label accuracy and seconds per update.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.bench_ggl import simulate, variant_means

SINGLES = [[7], [20], [130], [150]]
PAIRS = [[7, 130], [20, 150]]


def run(quick: bool = False) -> list[dict]:
    from fedattack.attacks.grnn import GRNNParams

    base = GRNNParams(iterations=300 if quick else 1000)
    cases = [("batch 1, 32 px", SINGLES[:1] if quick else SINGLES, {"grnn": base,
                                                                     "grnn, recovered labels": replace(base, labels="recover"),
                                                                     "grnn, sorted WD": replace(base, wd="sorted")})]
    if not quick:
        cases.append(("batch 2, 32 px", PAIRS, {"grnn": base}))
    rows: list[dict] = []
    for label, batches, variants in cases:
        means = variant_means("grnn", variants, (simulate(["model.init=uniform"], b) for b in batches))
        for name, m in means.items():
            rows.append({"setting": label, "attack": name, "updates": m["updates"], "iterations": base.iterations,
                         **{k: m[k] for k in ("psnr", "ssim", "label_acc", "seconds")}})
    return rows
