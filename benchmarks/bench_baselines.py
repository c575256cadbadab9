"""baselines: what the flat-image baseline assumes the attacker knows.

Every score is set against the best constant image per victim: its own mean grey (the PSNR of
a flat image at each image's mean pixel). That constant is not free to an attacker: on a client
of several images it is each image's own brightness, which the update has to give away image
by image. What the update gives away for nothing is the batch's mean colour: the first layer's
gradient carries it where that layer has a bias (`engine.leaked_colour`). This benchmark sets
the two side by side on the victims of the `realistic` and `protocol_map` benchmarks (the same
datasets, sizes, images per client and each case's own seeds, of which `realistic_epochs` runs
two and `dimitrov` one; no attack runs): `flat` is the baseline of every
table, `batch grey` the PSNR of one flat image at the mean grey of all of a client's images,
scored against each of them. Where the two are far apart (photos of varied brightness, many
images per client), a reconstruction can sit at `batch grey`, below `flat`, while it knows
every brightness the update gave away: its margin below `flat` is then per-image brightness
the update did not resolve, not detail an attack made worse than nothing.
"""

from __future__ import annotations

import numpy as np

from benchmarks.bench_realistic import cases, flat_psnr, victim_indices
from fedattack.metrics.images import psnr


def _baselines(overrides: tuple[str, ...], n: int, seeds: tuple[int, ...]) -> tuple[float, float]:
    """Mean `flat` and `batch grey` PSNR over the victims `bench_realistic.victim` draws."""
    flat, grey = [], []
    for seed in seeds:
        exp, idx = victim_indices(overrides, n, seed)
        x, _ = exp.train.get(idx)
        t = exp.train.spec.to_pixels(x.float()).numpy()
        flat += flat_psnr(t).tolist()
        grey += [psnr(np.full_like(im, float(t.mean())), im) for im in t]
    return float(np.mean(flat)), float(np.mean(grey))


def run(quick: bool = False) -> list[dict]:
    every = [(c.name, c.overrides, c.images, c.seeds) for c in cases(False)]
    every += [(f"protocol map: {n} img, photos {size} px", ("data.name=photos", f"data.image_size={size}"), n, (0,))
              for n in (4, 16) for size in (32, 16)]  # 16 px: the ConvNet's rows on a CPU
    rows = []
    for name, overrides, n, seeds in every[:2] if quick else every:
        flat, grey = _baselines(overrides, n, seeds)
        rows.append({"case": name, "images per client": n, "seeds": len(seeds),
                     "flat (each image's mean grey)": flat, "batch grey (the client's mean grey)": grey,
                     "gap": flat - grey})
    return rows
