"""grey_starts: where the update hides the colour, on Geiping et al.'s ConvNet (BatchNorm after every convolution).

BatchNorm right after the first convolution removes each channel's mean over the batch and the
image, so the first layer's gradient says nothing about the client's colour (no bias gradient to
read it from) and the update constrains it only through the zero padding at the image border. From
N(0, 1) noise around the dataset mean (`greys=1`: `invgrad`'s start where no colour leaks) the
run stays noise around the dataset mean; by default (`greys=3`) `invgrad` runs from three flat
grey starts (20%, 50% and 80% of the pixel range, noise of std 0.1), each with half the iterations,
and keeps the one with the lowest loss. One photo in one local step, eight victims; columns as in
`realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["grey_starts"], quick)
