"""breaching: fedattack's dlg and invgrad side by side with breaching (JonasGeiping/breaching).

Both tools attack IDENTICAL observed updates: one client update per case, computed once by
fedattack's own client code (`fedattack.testing.cases.observed_update`: the model, its
weights, the private images and the local SGD run), then handed to both. breaching is given
the update as its attackers take a user's message: a server payload (the same model's
parameters, no buffers, so BatchNorm normalizes with the batch's own statistics as in the
client's training; metadata with the data's shape, classes, mean and std) and shared data
(one local step: the gradient, -update / lr; several steps: the parameter difference with
`local_hyperparams` lr, steps and data per step; `num_data_points` = the client's count,
`labels` = None). breaching is not a dependency of fedattack: without it this benchmark
returns one row saying so. Both tools run with one torch thread, and the runs of a case
alternate between the tools (which one goes first alternates from case to case); images are
scored the same way (fedattack.metrics.images.match_and_score on [0, 1] pixels, mean over
the images). Seconds are the attack call's wall time, label recovery included, breaching's
config composition (hydra) excluded.

Rows:
- dlg, DLG's setting (Zhu et al., NeurIPS 2019): LeNet with sigmoid activations and weights
  drawn from U(-0.5, 0.5), one 32 px RGB lfw-subset face, one local step; faces 0-3 of the
  training split, seed = face. fedattack's `dlg` at its defaults (300 L-BFGS steps of up to
  20 evaluations, torch's tolerances, ending on the best iterate) against breaching's
  `deepleakage` config (L-BFGS at torch's defaults, step 1, 1200 steps, labels optimized
  jointly, unboxed). steps = L-BFGS steps taken, evals = objective evaluations. A summary row
  per tool: faces at >= 30 dB, median PSNR, total seconds.
- invgrad (Geiping et al., NeurIPS 2020) at equal work: breaching's `invertinggradients`
  config (cosine similarity, TV 0.2, signed Adam lr 0.1, boxed, step-lr decay, one trial,
  its config's label strategy "bias-corrected") with the iteration count set to this
  benchmark's; fedattack's `invgrad` with the same settings (loss=cosine, absolute tv=0.2, lr=0.1,
  signed, boxed, decay, the same iterations, restarts=1, candidates=1, and saturated=1: no second
  run where the output collapses, which breaching does not have) and at its defaults
  (named in the `settings` column: TV relative to the mismatch, its restarts, and the label
  candidates screened; same iterations), labels by
  `audit.labels=auto`. TV: both are the mean absolute difference of
  neighbouring pixels, dx + dy (breaching's convolution also counts the image border
  against zero padding). Over several local steps breaching's objective takes the labels of
  each step from `local_hyperparams`: "breaching" gets its own label recovery (run on the
  update read as a gradient, -update / (lr * steps)) grouped into steps in sorted order, as
  fedattack's first candidate is; "breaching, true step labels" gets the client's true
  labels per step, which breaching's own multi-step user shares with the server.
  label_acc = share of the true label multiset recovered; s/it = seconds per optimizer
  iteration (fedattack's defaults: screening and main iterations together);
  time_vs_breaching = seconds / breaching's seconds on the case. Each case runs at seeds 0, 1
  and 2 (the seed draws the model's weights and the client's images); a last table gives each
  tool's mean over the seeds, where the quality target is judged.
Targets: dlg at least breaching's DLG quality in at most its time; invgrad at its defaults at
least breaching's quality, and fedattack's equal-work run in at most 0.7x breaching's time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections import Counter
from dataclasses import replace
from unittest import mock

import numpy as np
import torch

from fedattack import config as fconfig
from fedattack.attacks import ATTACKS, AttackContext, engine
from fedattack.client.train import schedule as client_schedule
from fedattack.models import build_model
from fedattack.testing.cases import observed_update, psnr_ssim

THREADS = 1
RECOVERED_DB = 30.0
DLG_FACES = [0, 1, 2, 3]  # training-split faces of lfw-subset (its first 80 training images are faces)
DLG_SETTING = ("data.name=lfw-subset", "data.image_size=32", "data.channels=3", "model.name=lenet",
               "model.activation=sigmoid", "model.init=uniform", "model.init_scale=0.5", "client.batch_size=1",
               "client.local_steps=1", "client.lr=0.01", "client.momentum=0.0")
BREACHING_DLG_STEPS = 1200  # config/attack/deepleakage.yaml
MODELS = {
    "lenet": ("model.name=lenet", "model.activation=sigmoid", "model.init=default", "data.name=lfw-subset",
              "data.channels=3"),
    "convnet": ("model.name=convnet", "model.width=8", "model.activation=relu", "model.init=default",
                "data.name=photos"),
    "quickstart-cnn": ("model.name=quickstart-cnn", "model.activation=relu", "model.init=default",
                       "data.name=photos"),
}
PROTOCOLS = {
    "1 img, 1 step": ("client.batch_size=1", "client.local_steps=1"),
    "4 img, 1 step": ("client.batch_size=4", "client.local_steps=1"),
    "4 img, 2 steps of 2": ("client.batch_size=2", "client.local_steps=2"),
}

CASES = [(m, p) for m in ("lenet", "convnet") for p in PROTOCOLS] + [("quickstart-cnn", "1 img, 1 step")]
SEEDS = (0, 1, 2)  # each invgrad case: the model's weights and the client's images


# ---------------------------------------------------------------- breaching, when installed

def _breaching():
    """The breaching package, or the reason it cannot be used."""
    try:
        import breaching
    except Exception as e:  # not installed, or its own imports fail
        return None, f"{type(e).__name__}: {e}"
    return breaching, ""


def attack_config(breaching, name: str, overrides: list[str]):
    """breaching's attack config `name` (its shipped yaml) with `overrides`, quietly."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return breaching.get_attack_config(name, overrides)


def _param_names(obs) -> list[str]:
    return [k for k, _ in build_model(obs.model).named_parameters()]


def breaching_message(obs, step_labels: list[torch.Tensor] | None = None, labels: torch.Tensor | None = None,
                      gradient_units: bool = False):
    """The observed update as breaching's attackers take it: (model, server_payload, shared_data).

    The model is fedattack's architecture (build_model of the observation's ModelSpec); its
    weights are the payload's parameters, the exact tensors the client trained from, in the
    module's parameter order. No buffers are sent: breaching then puts the model in training
    mode without running statistics, so BatchNorm uses the batch's statistics, as the client's
    training did. One local step: the gradient (-update / lr). Several: the parameter
    difference, with the client's lr, steps, batch size and per-step labels."""
    from omegaconf import OmegaConf

    names = _param_names(obs)
    p = obs.protocol
    meta = OmegaConf.create({"modality": "vision", "task": "classification", "shape": list(obs.data.shape),
                             "classes": obs.data.num_classes, "mean": list(obs.data.mean), "std": list(obs.data.std)})
    payload = [{"parameters": [obs.global_params[k].detach().clone() for k in names], "buffers": None,
                "metadata": meta}]
    steps = max(1, p.local_steps)
    if steps == 1 or gradient_units:
        grads, hyper = obs.gradient_estimate(), None
    else:
        grads = obs.update
        hyper = {"lr": p.lr, "steps": steps, "data_per_step": p.batch_size, "labels": step_labels}
    shared = [{"gradients": [grads[k].detach().clone() for k in names], "buffers": None,
               "metadata": {"num_data_points": _n(obs), "labels": labels, "local_hyperparams": hyper}}]
    return build_model(obs.model), payload, shared


def _n(obs) -> int:
    return max(1, obs.protocol.num_examples or obs.protocol.batch_size)


def breaching_labels(breaching, cfg, obs) -> torch.Tensor:
    """breaching's own label recovery (its config's label_strategy) on the update read as a
    gradient, -update / (lr * steps): its prepare_attack on a one-step message."""
    model, payload, shared = breaching_message(obs, gradient_units=True)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg)
    _, labels, _ = attacker.prepare_attack(payload, shared)
    return labels.cpu().sort().values


def run_breaching(breaching, cfg, obs, seed: int, true_steps: list[torch.Tensor] | None = None) -> dict:
    """breaching's attack `cfg` on the observation. Over several local steps its objective
    takes each step's labels from local_hyperparams: its own label recovery grouped into
    steps in sorted order, or `true_steps` when given (the client's labels per step)."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    steps = max(1, obs.protocol.local_steps)
    labels, step_labels = None, None
    if steps > 1 and cfg.attack_type != "joint-optimization":
        if true_steps is not None:
            step_labels = [y.sort().values for y in true_steps]
        else:
            labels = breaching_labels(breaching, cfg, obs)
            b = obs.protocol.batch_size
            step_labels = [labels[(s * b + torch.arange(b)) % len(labels)].sort().values for s in range(steps)]
    model, payload, shared = breaching_message(obs, step_labels, labels)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg)
    counter = _count(attacker.objective)
    rec, stats = attacker.reconstruct(payload, shared, {}, dryrun=False)
    seconds = time.perf_counter() - t0
    used = torch.cat(step_labels) if step_labels is not None else rec["labels"]
    return {"images": rec["data"].detach(), "labels": used, "seconds": seconds,
            "steps": len(stats.get("Trial_0_Val", [])), "evals": counter[0]}


def _count(objective) -> list[int]:
    """Count calls of a breaching objective module (one per closure evaluation)."""
    calls = [0]
    forward = objective.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    objective.forward = counted
    return calls


# ---------------------------------------------------------------- fedattack

def run_fedattack(attack: str, obs, seed: int, **overrides) -> dict:
    spec = ATTACKS.get(attack)
    params = replace(spec.params(), **overrides)
    calls = [0]
    original = engine.Matching.objective

    def objective(self, x, y):
        calls[0] += 1
        return original(self, x, y)

    with mock.patch.object(engine.Matching, "objective", objective):
        t0 = time.perf_counter()
        rec = spec(obs, params, AttackContext(device=torch.device("cpu"), seed=seed, labels="auto"))
        seconds = time.perf_counter() - t0
    return {"images": rec.images.detach(), "labels": rec.labels, "seconds": seconds,
            "steps": rec.info.get("iterations"), "evals": calls[0], "info": rec.info}


# ---------------------------------------------------------------- cases and scores

def case(*overrides: str, indices: list[int] | None = None):
    """One observed update (fedattack's client code), its truth, and the client's true labels
    per local step (for the breaching variant that is given them; no attack sees them
    otherwise)."""
    obs, truth = observed_update(*overrides, indices=indices)
    cfg = fconfig.load(None, ["audit.attacks=[]", *overrides])
    label_of = dict(zip(truth.indices, truth.labels.tolist()))
    batches = client_schedule(np.asarray(truth.indices), cfg, 1, 0)
    return obs, truth, [torch.tensor([label_of[int(i)] for i in b]) for b in batches]


def model_case(model: str, protocol: str, size: int, seed: int = 0):
    """`case` for one of MODELS under one of PROTOCOLS, at `size` px, plain SGD at lr 0.01."""
    return case(f"seed={seed}", *MODELS[model], f"data.image_size={size}", *PROTOCOLS[protocol], "client.lr=0.01",
                "client.momentum=0.0")


def label_accuracy(labels, truth) -> float:
    """Share of the true label multiset that the recovered labels contain."""
    if labels is None:
        return float("nan")
    got, want = Counter(torch.as_tensor(labels).view(-1).tolist()), Counter(truth.labels.tolist())
    return sum(min(got[c], k) for c, k in want.items()) / max(1, len(truth.labels))


def scored(result: dict, truth, obs) -> dict:
    psnr, ssim = psnr_ssim(result["images"], truth, obs)
    return {**result, "psnr": psnr, "ssim": ssim, "label_acc": label_accuracy(result["labels"], truth)}


# ---------------------------------------------------------------- rows

def dlg_rows(breaching, quick: bool) -> list[dict]:
    fed_steps = 10 if quick else ATTACKS.get("dlg").params().iterations
    br_steps = 4 * fed_steps if quick else BREACHING_DLG_STEPS
    cfg = attack_config(breaching, "deepleakage", [f"optim.max_iterations={br_steps}", "optim.callback=100000"])
    faces = DLG_FACES[:1] if quick else DLG_FACES
    tools = {"breaching deepleakage": f"L-BFGS at torch's defaults, {br_steps} steps, joint labels",
             "fedattack dlg": f"defaults: L-BFGS, {fed_steps} steps of up to 20 evals, joint labels"}
    rows, per_tool = [], {tool: [] for tool in tools}
    for k, face in enumerate(faces):
        obs, truth, _ = case(f"seed={face}", *DLG_SETTING, indices=[face])
        runs = [("fedattack dlg", lambda: run_fedattack("dlg", obs, face, iterations=fed_steps)),
                ("breaching deepleakage", lambda: run_breaching(breaching, cfg, obs, face))]
        done = {tool: scored(fn(), truth, obs) for tool, fn in (runs if k % 2 == 0 else runs[::-1])}
        for tool, settings in tools.items():
            r = done[tool]
            per_tool[tool].append(r)
            rows.append({"table": "dlg, DLG's setting", "case": f"face {face} (seed {face})", "tool": tool,
                         "settings": settings, "psnr": r["psnr"], "ssim": r["ssim"], "seconds": r["seconds"],
                         "steps": r["steps"], "evals": r["evals"], "s/eval": r["seconds"] / max(1, r["evals"])})
    summary = {}
    for tool, rs in per_tool.items():
        summary[tool] = {"table": "dlg, DLG's setting", "case": f"{len(rs)} faces: median psnr/ssim, totals",
                         "tool": tool, "settings": tools[tool],
                         "psnr": statistics.median(r["psnr"] for r in rs),
                         "ssim": statistics.median(r["ssim"] for r in rs),
                         "seconds": sum(r["seconds"] for r in rs), "steps": sum(r["steps"] for r in rs),
                         "evals": sum(r["evals"] for r in rs),
                         "s/eval": sum(r["seconds"] for r in rs) / max(1, sum(r["evals"] for r in rs)),
                         "recovered": f"{_recovered(rs)}/{len(rs)} at >= {RECOVERED_DB:.0f} dB"}
    fed, br = summary["fedattack dlg"], summary["breaching deepleakage"]
    quality = (_recovered(per_tool["fedattack dlg"]) >= _recovered(per_tool["breaching deepleakage"])
               and fed["psnr"] >= br["psnr"])
    ratio = fed["seconds"] / br["seconds"]
    fed["target"] = (f"recovered and median psnr >= breaching's: {'yes' if quality else 'no'}; "
                     f"time {ratio:.2f}x breaching's <= 1: {'yes' if ratio <= 1 else 'no'}")
    return rows + list(summary.values())


def _recovered(results: list[dict]) -> int:
    return sum(r["psnr"] >= RECOVERED_DB for r in results)


def breaching_settings(iterations: int) -> dict:
    """fedattack invgrad's parameters for breaching's `invertinggradients` config: cosine, the
    paper's absolute TV weight 0.2, signed Adam at lr 0.1 with step decay, boxed, one trial."""
    return dict(iterations=iterations, loss="cosine", tv=0.2, balanced=False, lr=0.1, signed=True, boxed=True,
                lr_decay=True, restarts=1, candidates=1, init="randn", levels=1, saturated=1.0)


INVGRAD_TOOLS = ("breaching invertinggradients", "fedattack invgrad, breaching's settings",
                 "fedattack invgrad, defaults", "breaching invertinggradients, true step labels")


def invgrad_rows(breaching, model: str, protocol: str, iterations: int, size: int, seed: int, k: int,
                 true_steps: bool) -> list[dict]:
    obs, truth, steps = model_case(model, protocol, size, seed)
    cfg = attack_config(breaching, "invertinggradients",
                        [f"optim.max_iterations={iterations}", "restarts.num_trials=1", "optim.callback=100000"])
    equal = breaching_settings(iterations)
    pair = [("fedattack invgrad, breaching's settings", lambda: run_fedattack("invgrad", obs, seed, **equal)),
            ("breaching invertinggradients", lambda: run_breaching(breaching, cfg, obs, seed))]
    runs = pair if k % 2 == 0 else pair[::-1]
    runs.append(("fedattack invgrad, defaults", lambda: run_fedattack("invgrad", obs, seed, iterations=iterations)))
    if true_steps and max(1, obs.protocol.local_steps) > 1:
        runs.append(("breaching invertinggradients, true step labels",
                     lambda: run_breaching(breaching, cfg, obs, seed, true_steps=steps)))
    results = {tool: scored(fn(), truth, obs) for tool, fn in runs}
    base = results["breaching invertinggradients"]
    data = next(o.split("=", 1)[1] for o in MODELS[model] if o.startswith("data.name="))
    name = f"{model}, {data} {size} px, {protocol} (seed {seed})"
    rows = []
    for tool in (t for t in INVGRAD_TOOLS if t in results):
        r = results[tool]
        if tool.startswith("breaching"):
            its = r["steps"]
            settings = ("its config; each step's labels: the client's true ones" if "true" in tool
                        else "its config; labels: its own recovery (bias-corrected)")
        else:
            its = _fed_iterations(r)
            equal = "tv 0.2 (absolute), restarts 1, candidates 1, no collapse rerun, labels auto"
            settings = (equal if "settings" in tool else
                        f"{_defaults()}, {r['info'].get('label_candidates', 1)} label candidate(s), labels auto")
        row = {"table": "invgrad", "case": name, "tool": tool, "settings": settings, "iterations": its,
               "psnr": r["psnr"], "ssim": r["ssim"], "label_acc": r["label_acc"], "seconds": r["seconds"],
               "s/it": r["seconds"] / max(1, its), "time_vs_breaching": r["seconds"] / base["seconds"],
               "psnr_vs_breaching": r["psnr"] - base["psnr"]}
        if tool == "fedattack invgrad, defaults":
            row["target"] = f"psnr >= breaching's: {'yes' if r['psnr'] >= base['psnr'] else 'no'}"
        elif tool == "fedattack invgrad, breaching's settings":
            row["target"] = f"time <= 0.7x breaching's: {'yes' if r['seconds'] <= 0.7 * base['seconds'] else 'no'}"
        rows.append(row)
    return rows


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per case and tool, the mean over the seeds of the invgrad rows; the quality target of
    invgrad's defaults is judged on these means."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"].rsplit(" (seed", 1)[0], r["tool"]), []).append(r)
    out = []
    for (case, tool), rs in groups.items():
        seeds = ", ".join(r["case"].rsplit("(seed ", 1)[1].rstrip(")") for r in rs)
        base = groups[(case, "breaching invertinggradients")]
        row = {"table": "invgrad, mean over seeds", "case": f"{case} (seeds {seeds})", "tool": tool}
        for key in ("psnr", "ssim", "label_acc", "seconds"):
            row[key] = float(np.mean([r[key] for r in rs]))
        row["psnr_vs_breaching"] = row["psnr"] - float(np.mean([r["psnr"] for r in base]))
        row["time_vs_breaching"] = row["seconds"] / float(np.mean([r["seconds"] for r in base]))
        row["wins"] = f"{sum(r['psnr'] >= b['psnr'] for r, b in zip(rs, base))}/{len(rs)}"
        if tool == "fedattack invgrad, defaults":
            row["target"] = f"mean psnr >= breaching's: {'yes' if row['psnr_vs_breaching'] >= 0 else 'no'}"
        out.append(row)
    return out


def _defaults() -> str:
    """invgrad's default settings as a row names them."""
    from fedattack.attacks.invgrad import InvGradParams

    p = InvGradParams()
    return (f"tv {p.tv:g} ({'relative' if p.balanced else 'absolute'}), loss {p.loss}, init {p.init}, "
            f"restarts {p.restarts}")


def speed_rows(breaching, cases: list[tuple[str, str]], size: int, iterations: int, rounds: int) -> list[dict]:
    """Seconds per iteration at equal work, robust to a shared machine's load: `rounds`
    alternating short runs of breaching's invertinggradients and fedattack's invgrad with
    its settings (`iterations` each), median per tool."""
    cfg = attack_config(breaching, "invertinggradients",
                        [f"optim.max_iterations={iterations}", "restarts.num_trials=1", "optim.callback=100000"])
    equal = breaching_settings(iterations)
    rows = []
    for model, protocol in cases:
        obs, _, _ = model_case(model, protocol, size)
        fed, br = [], []
        for r in range(rounds):
            pair = [(br, lambda: run_breaching(breaching, cfg, obs, r)),
                    (fed, lambda: run_fedattack("invgrad", obs, r, **equal))]
            for out, fn in (pair if r % 2 == 0 else pair[::-1]):
                out.append(fn()["seconds"] / iterations)
        f, b = statistics.median(fed), statistics.median(br)
        data = next(o.split("=", 1)[1] for o in MODELS[model] if o.startswith("data.name="))
        rows.append({"table": "invgrad speed, equal work", "case": f"{model}, {data} {size} px, {protocol}",
                     "iterations": iterations, "rounds": rounds, "breaching s/it": b, "fedattack s/it": f,
                     "fedattack/breaching": f / b, "target <= 0.7": f / b <= 0.7,
                     "fedattack runs s/it": " ".join(f"{v:.4f}" for v in fed),
                     "breaching runs s/it": " ".join(f"{v:.4f}" for v in br)})
    return rows


def _fed_iterations(r: dict) -> int:
    """Optimizer iterations of a fedattack invgrad run: the screening's and the main run's, for
    each flat grey start where it ran several, twice where a collapsed run ran again."""
    info = r["info"]
    greys = info.get("grey_starts", {})
    runs, each = len(greys.get("losses", ())) or 1, greys.get("iterations_each", info["iterations"])
    once = runs * (each + (max(1, each // 10) if info.get("label_candidates", 1) > 1 else 0))
    return 2 * once if "collapsed" in info else once  # a collapsed run ran again with the per-layer cosine


def _warm_up(breaching) -> None:
    """One tiny run of each tool, so that no timed run pays the process's first calls."""
    obs, _, _ = case("seed=0", *MODELS["lenet"], "data.image_size=16", *PROTOCOLS["1 img, 1 step"])
    cfg = attack_config(breaching, "invertinggradients", ["optim.max_iterations=2", "optim.callback=100000"])
    run_breaching(breaching, cfg, obs, 0)
    run_fedattack("invgrad", obs, 0, iterations=2, candidates=1, restarts=1)
    cfg = attack_config(breaching, "deepleakage", ["optim.max_iterations=2", "optim.callback=100000"])
    run_breaching(breaching, cfg, obs, 0)
    run_fedattack("dlg", obs, 0, iterations=2)


def run(quick: bool = False) -> list[dict]:
    breaching, why = _breaching()
    if breaching is None:
        return [{"table": "breaching", "note": f"breaching is not installed, nothing compared ({why})"}]
    torch.set_num_threads(THREADS)
    logging.getLogger("breaching").setLevel(logging.WARNING)
    _warm_up(breaching)
    rows = [{"table": "versions", "note": f"breaching {_version()}, torch {torch.__version__}, "
                                           f"torch threads {torch.get_num_threads()}"}]
    rows += dlg_rows(breaching, quick)
    if quick:
        cases = [("lenet", "1 img, 1 step"), ("convnet", "4 img, 2 steps of 2")]
        iterations, size = 20, 16
    else:
        cases = CASES
        iterations, size = 400, 32
    per_seed = []
    for seed in (0,) if quick else SEEDS:
        for k, (model, protocol) in enumerate(cases):
            per_seed += invgrad_rows(breaching, model, protocol, iterations, size, seed=seed, k=k + seed,
                                     true_steps=not quick)
    rows += per_seed + mean_rows(per_seed)
    rows += speed_rows(breaching, cases[:1] if quick else cases, size, 5 if quick else 40, 2 if quick else 3)
    return rows


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("breaching")
    except PackageNotFoundError:
        return "(version unknown)"
