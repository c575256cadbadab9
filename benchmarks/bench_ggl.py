"""GGL vs invgrad under Gaussian noise (Li et al., CVPR 2022, the paper's audit of noise).

A generator is trained (`fedattack.models.generator.train_generator`, the code behind
`fedattack train-generator`) on the lfw-subset training faces minus the victims; each victim
face is the client's single private image (batch 1, one local step, lr 0.01, 32 px). The
observed update gets Gaussian noise of std sigma in gradient units (-update / lr), added
here so the benchmark does not depend on the defense modules. Rows: per model and sigma,
GGL (CMA-ES over the latent) and invgrad (the registry's, or a Geiping-style stand-in with
the same recipe when it is not registered), mean PSNR / SSIM over the victims and seconds
per image. The figure: with sigma = 0.01 on LeNet-ReLU, ggl's SSIM > invgrad's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedattack import config as fconfig
from fedattack.threat import DefenseSetting, Observation, Protocol, Reconstruction, Truth
from fedattack.testing.cases import case_config

VICTIMS = [1, 3, 5, 20, 23, 38]  # training-split faces (label 1) of lfw-subset, seed-drawn once


def simulate(overrides: list[str], indices: list[int], noise: tuple[str, float] | None = None, seed: int = 0,
             warm_bn: bool = False) -> tuple[Observation, Truth]:
    """One client update on `indices` (one local step over them all), with optional noise
    ("gaussian", sigma) or ("laplacian", b) added in gradient units, as the server sees it.

    warm_bn: set the sent model's BatchNorm running statistics to the training split's (a
    global model after some rounds of FedAvg, which averages those buffers too)."""
    from fedattack.client.train import local_train
    from fedattack.experiment import build
    from fedattack.models import float_params

    cfg = case_config("client.local_steps=1", f"client.batch_size={len(indices)}", f"seed={seed}", *overrides)
    exp = build(cfg)
    model = exp.initial_model()
    if warm_bn:
        _warm_batchnorm(model, exp.train)
    sent = {k: v.detach().clone() for k, v in {**dict(model.state_dict()), **float_params(model)}.items()}
    names = [n for n, _ in model.named_parameters()]
    result = local_train(model, exp.train, np.asarray(indices), cfg, rnd=1, client=0)
    lr, steps = cfg.client.lr, result.steps
    update = {k: result.update[k].float() for k in names}
    defenses: tuple[DefenseSetting, ...] = ()
    if noise is not None:
        kind, scale = noise
        gen = torch.Generator().manual_seed(10_000 + seed)
        for k in names:
            shape = update[k].shape
            if kind == "gaussian":
                z = torch.randn(shape, generator=gen) * scale
            else:
                u = torch.rand(shape, generator=gen).clamp(1e-7, 1 - 1e-7) - 0.5
                z = -scale * torch.sign(u) * torch.log1p(-2 * u.abs())
            update[k] = update[k] - lr * steps * z
        defenses = (DefenseSetting(kind, {"sigma": scale} if kind == "gaussian" else {"scale": scale}),)
    glob = {k: sent[k].float() for k in names}
    buffers = {k: v for k, v in sent.items() if k not in glob}
    protocol = Protocol(lr=lr, local_steps=steps, local_epochs=1, batch_size=cfg.client.batch_size,
                        num_examples=result.num_examples, defenses=defenses)
    obs = Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update,
                      protocol=protocol, buffers=buffers)
    return obs, exp.train.truth(result.indices)


def _warm_batchnorm(model: torch.nn.Module, data) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the population statistics
    model.train()
    with torch.no_grad():
        for s in range(0, len(data), 64):
            model(data.get(range(s, min(len(data), s + 64)))[0])
    for m in bns:
        m.momentum = 0.1


def attack(name: str, obs: Observation, params, seed: int = 0) -> tuple[Reconstruction, float]:
    from fedattack.attacks import ATTACKS, AttackContext

    t0 = time.perf_counter()
    rec = ATTACKS.get(name)(obs, params, AttackContext(seed=seed))
    return rec, time.perf_counter() - t0


def scores(rec: Reconstruction, truth: Truth, obs: Observation):
    from fedattack.metrics import score

    return score(rec, truth, obs.data)


def variant_means(name: str, variants: dict, observed) -> dict[str, dict]:
    """Run attack `name` with each of `variants` (label -> params) on every (obs, truth) of
    `observed`; per variant the number of updates and the mean PSNR, SSIM, label accuracy and
    seconds."""
    acc: dict[str, list] = {}
    for obs, truth in observed:
        for label, params in variants.items():
            rec, dt = attack(name, obs, params)
            s = scores(rec, truth, obs)
            acc.setdefault(label, []).append((s.psnr, s.ssim, s.label_acc, dt))
    out = {}
    for label, vals in acc.items():
        arr = np.array(vals)
        out[label] = {"updates": len(vals), "psnr": float(arr[:, 0].mean()), "ssim": float(arr[:, 1].mean()),
                      "label_acc": float(arr[:, 2].mean()), "seconds": float(arr[:, 3].mean())}
    return out


def invgrad_reference(obs: Observation, seed: int = 0) -> tuple[Reconstruction, float, str]:
    """The registry's invgrad with its defaults, or a stand-in with Geiping et al.'s recipe."""
    from fedattack.attacks import ATTACKS

    if "invgrad" in ATTACKS.names():
        rec, dt = attack("invgrad", obs, ATTACKS.get("invgrad").params(), seed)
        return rec, dt, "invgrad"
    t0 = time.perf_counter()
    rec = _geiping_style(obs, seed=seed)
    return rec, time.perf_counter() - t0, "invgrad-style (stand-in)"


def _geiping_style(obs: Observation, iterations: int = 1000, tv: float = 0.01, seed: int = 0) -> Reconstruction:
    """Cosine matching + TV, Adam on signed gradients, box constraint, step decay at 3/8, 5/8, 7/8."""
    from fedattack.attacks.engine import cosine_distance, num_images, total_variation, trial_update
    from fedattack.attacks.labels import recover_labels

    trial = trial_update(obs, torch.device("cpu"))
    target = obs.gradient_estimate()
    n = num_images(obs)
    y, _ = recover_labels(obs, n, "auto")
    lo, hi = obs.data.bounds()
    x = torch.randn((n, *obs.data.shape), generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)], 0.1)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = cosine_distance(trial(x, y), target) + tv * total_variation(x)
        loss.backward()
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.copy_(torch.max(torch.min(x, hi), lo))
    return Reconstruction(images=x.detach(), labels=y, info={"loss": float(loss.detach())})


def train_face_generator(victims: list[int], epochs: int, out: Path) -> dict:
    from fedattack.models.generator import TrainSettings, make_meta, save_generator, train_generator
    from fedattack.train_generator import training_images

    cfg = fconfig.load(None, ["audit.attacks=[]"])
    pixels, dropped = training_images(cfg, split="train", labels=[1], exclude=victims)
    settings = TrainSettings(epochs=epochs, batch_size=32, width=16, latent_dim=64)
    G, stats = train_generator(pixels, settings, seed=0)
    save_generator(out, G, make_meta(G, settings, pixels.shape[1], dataset="lfw-subset", labels=[1],
                                     excluded=dropped))
    return {"images": int(pixels.shape[0]), **stats}


def run(quick: bool = False) -> list[dict]:
    from fedattack.attacks.ggl import GGLParams

    victims = VICTIMS[:2] if quick else VICTIMS
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "faces.pt"
        info = train_face_generator(victims, 150 if quick else 1000, path)
        rows.append({"setting": "train-generator (dcgan, lfw faces minus victims)", "attack": "-",
                     "images": info["images"], "steps": info["generator_steps"], "seconds": info["seconds"],
                     "cpu_seconds": info["cpu_seconds"]})
        budget = 1000 if quick else 5000
        params = GGLParams(generator=str(path), budget=budget)
        models = [("lenet-relu", ["model.activation=relu"])]
        if not quick:
            models.append(("lenet-sigmoid", []))
        for label, overrides in models:
            for sigma in ([0.01] if quick else [0.0, 0.01]):
                acc: dict[str, list] = {}
                for v in victims:
                    obs, truth = simulate(overrides, [v], ("gaussian", sigma) if sigma else None)
                    rec, dt = attack("ggl", obs, params)
                    s = scores(rec, truth, obs)
                    acc.setdefault(f"ggl (cmaes {budget})", []).append((s.psnr, s.ssim, dt))
                    rec, dt, name = invgrad_reference(obs)
                    s = scores(rec, truth, obs)
                    acc.setdefault(name, []).append((s.psnr, s.ssim, dt))
                for name, vals in acc.items():
                    arr = np.array(vals)
                    rows.append({"setting": f"{label}, sigma={sigma}", "attack": name, "images": len(vals),
                                 "psnr": float(arr[:, 0].mean()), "ssim": float(arr[:, 1].mean()),
                                 "ssim_min": float(arr[:, 1].min()), "seconds": float(arr[:, 2].mean())})
    return rows


__all__ = ["run", "simulate", "attack", "scores", "variant_means", "invgrad_reference", "VICTIMS"]
