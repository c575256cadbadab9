"""protocol_map: how leakage depends on the client's protocol (images, batch size, local epochs).

The question Flower users ask: "attacks work poorly on my app with 3 epochs of batch 32: is my
deployment safe?". For each model (LeNet sigmoid, ConvNet, Flower's quickstart CNN) and each
client protocol on a grid of images per client x batch size x local epochs (photos, lr 0.01,
the client reshuffling every epoch), one client update is attacked by `invgrad` and `fedavg`,
at their defaults and calibrated on the server's own test split (`audit.calibrate` with 4
attack runs per setting on simulated clients holding at least `audit.calibration_images` images
in all, once per protocol), all on the same victims. One row per model and protocol: the size
of the problem (update entries per unknown pixel: below 1, the update holds fewer
numbers than the pixels it hides), the flat-image baseline of the victims (mean PSNR of the best
constant image per victim), and per attack its mean PSNR, images recovered (SSIM >= 0.5 and
above the best flat guess's SSIM) and seconds per job, with calibration's one-off cost.

On a CPU the grid is run small: every attack at 200 iterations (`ITERATIONS_CPU`), the ConvNet
at width 8 on 16 px images; on a GPU, or with FEDATTACK_FULL=1, the ConvNet runs at width 32 on
32 px images and the attacks at their defaults. `python -m benchmarks.bench_protocol_map MODEL
[--quick]`, MODEL one of lenet-sigmoid, convnet and quickstart-cnn, measures one model's rows
alone and prints them as JSON (one process per model runs the grid in parallel).
"""

from __future__ import annotations

import itertools
import sys

import torch

from benchmarks.bench_realistic import Case, full_scale, measure

ITERATIONS_CPU = 200
CALIBRATION_BUDGET = 4
MODELS = {
    "LeNet sigmoid": ("model.name=lenet", "model.activation=sigmoid"),
    "ConvNet": ("model.name=convnet", "model.activation=relu"),
    "quickstart CNN": ("model.name=quickstart-cnn", "model.activation=relu"),
}
ATTACK_ROWS = (("invgrad", False), ("fedavg", False), ("invgrad", True), ("fedavg", True))


def grid(quick: bool) -> list[tuple[int, int, int]]:
    """(images per client, batch size, local epochs)."""
    if quick:
        return [(4, 2, 1)]
    return list(itertools.product((4, 16), (2, 8), (1, 2)))


def scale_overrides(model: str) -> tuple[str, ...]:
    if model != "ConvNet":
        return ()
    return ("model.width=32", "data.image_size=32") if full_scale() else ("model.width=8", "data.image_size=16")


def run_model(model: str, quick: bool = False) -> list[dict]:
    """One model's rows over the whole grid, each attack measured as the realistic benchmarks
    measure it (`bench_realistic.measure`: the same victims, scores and calibration)."""
    torch.set_num_threads(1)
    iterations = None if full_scale() else (50 if quick else ITERATIONS_CPU)
    rows = []
    for n, b, e in grid(quick):
        case = Case(f"{model}: {n} img, batch {b}, {e} epoch{'s' if e > 1 else ''}",
                    ("data.name=photos", *MODELS[model], *scale_overrides(model), "client.local_steps=0",
                     f"client.local_epochs={e}", f"client.batch_size={b}"), n, seeds=(0,))
        for attack, calibrated in ATTACK_ROWS:
            row = measure(case, attack, calibrated, quick, budget=CALIBRATION_BUDGET, count=1, iterations=iterations)
            rows.append({"model": model, "images": n, "batch": b, "epochs": e, **row})
            print(rows[-1], flush=True)  # a long benchmark shows each row as it is measured
    return rows


def table(rows: list[dict]) -> list[dict]:
    """One row per (model, protocol): the problem's size, the flat baseline, and per attack its
    PSNR, images recovered and seconds per job (a calibrated attack's one-off calibration cost beside it)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["images"], r["batch"], r["epochs"])
        row = out.setdefault(key, {"model": r["model"], "images": r["images"], "batch": r["batch"],
                                   "epochs": r["epochs"], "entries / pixels": r["update_entries"] / r["unknown_pixels"],
                                   "flat": r["flat"]})
        a = r["attack"].replace(" (calibrated)", " cal.")
        row[f"{a} PSNR"], row[f"{a} rec."], row[f"{a} s"] = r["psnr"], r["recovered"], r["s_per_job"]
        if r["calibration_s"]:
            row[f"{a} calibration s"] = r["calibration_s"]
    return list(out.values())


def run(quick: bool = False) -> list[dict]:
    models = list(MODELS)[:1] if quick else list(MODELS)
    return table([row for model in models for row in run_model(model, quick)])


def slug(model: str) -> str:
    """A model's name on the command line: "LeNet sigmoid" -> lenet-sigmoid."""
    return model.lower().replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    prog = "python -m benchmarks.bench_protocol_map"
    names = {slug(m): m for m in MODELS}
    parser = argparse.ArgumentParser(prog=prog, description="Measure one model's protocol_map rows (printed as JSON).")
    parser.add_argument("model", metavar="MODEL",
                        help="one of: " + ", ".join(f"{k} ({m})" for k, m in names.items()))
    parser.add_argument("--quick", action="store_true", help="one small protocol, for a smoke run")

    def error(message: str) -> None:
        allowed = f"; allowed MODEL: {', '.join(names)}" if "MODEL" in message else ""
        print(f"{prog}: {message}{allowed}", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # one line, not argparse's usage block
    ns = parser.parse_args(argv)
    model = names.get(slug(ns.model.strip()))
    if model is None:
        error(f"MODEL: unknown model {ns.model!r}")
    print(json.dumps(run_model(model, quick=ns.quick), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
