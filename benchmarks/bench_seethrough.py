"""GradInversion (Yin et al., CVPR 2021) on a ConvNet with BatchNorm.

The sent model's BatchNorm running statistics are the training split's population
statistics (a global model after some FedAvg rounds); each client update is one local step
on a batch of 4 lfw-subset images (two faces, two non-faces). Rows: the full attack (BN
prior, TV, group consistency over 4 seeds, Langevin noise) and ablations with the same
budget, mean PSNR / SSIM / label accuracy over the batches and seconds per batch.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.bench_ggl import attack, scores, simulate, variant_means

BATCHES = [[7, 20, 130, 150], [3, 41, 95, 120], [12, 60, 88, 140]]  # training-split indices


def run(quick: bool = False) -> list[dict]:
    from fedattack.attacks.seethrough import SeeThroughParams

    settings = [("convnet w8, 16 px", ["model.name=convnet", "model.width=8", "model.activation=relu",
                                       "data.image_size=16"], 300 if quick else 1000)]
    if not quick:
        settings.append(("convnet w16, 32 px", ["model.name=convnet", "model.width=16", "model.activation=relu"],
                         1000))
    batches = BATCHES[:1] if quick else BATCHES
    rows: list[dict] = []
    for label, overrides, iterations in settings:
        full = SeeThroughParams(iterations=iterations)
        variants = {"seethrough": full, "no BN prior": replace(full, bn=0.0), "no group (G=1)": replace(full, group_size=1),
                    "gradient matching only": replace(full, bn=0.0, tv=0.0, group_size=1, noise=0.0)}
        means = variant_means("seethrough", variants, (simulate(overrides, b, warm_bn=True) for b in batches))
        for name, m in means.items():
            rows.append({"setting": label, "attack": name, "batches": m["updates"], "iterations": iterations,
                         **{k: m[k] for k in ("psnr", "ssim", "label_acc", "seconds")}})
    if not quick:  # ResNet-18 runs too; a short budget, for its cost
        obs, truth = simulate(["model.name=resnet18", "model.activation=relu", "data.image_size=16"], [7, 130],
                              warm_bn=True)
        rec, dt = attack("seethrough", obs, SeeThroughParams(iterations=50, group_size=2))
        s = scores(rec, truth, obs)
        rows.append({"setting": "resnet18, 16 px, batch 2", "attack": "seethrough (50 steps, G=2)", "batches": 1,
                     "iterations": 50, "psnr": s.psnr, "ssim": s.ssim, "label_acc": s.label_acc, "seconds": dt})
    return rows
