"""`fedattack attack`: one simulated client update, every configured attack, one table.

The victim trains `client.local_steps` steps of `client.batch_size` at `client.lr` on
`victim.indices` of the training split (drawn by seed when unset); each attack in
`audit.attacks` runs on the resulting update, exactly as the audit of a run would.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedattack import shutdown
from fedattack.client.train import local_train, returned_state
from fedattack.config import defense_sections_in_force
from fedattack.defenses import secure_aggregation
from fedattack.errors import ConfigError
from fedattack.experiment import Experiment, build
from fedattack.limits import check_memory, check_model
from fedattack.models import float_params
from fedattack.report.console import Progress, server_words
from fedattack.report.exposure import image_rows, owners_of
from fedattack.report.store import Run
from fedattack.report.summary import run_header
from fedattack.results import JobResult
from fedattack.schema import Config
from fedattack.server.audit import Auditor, experiment_plan, make_observation
from fedattack.server.dispatch import LocalDispatcher
from fedattack.server.interrupt import interruption
from fedattack.text import counted
from fedattack.threat import Observation, Truth


def victim_indices(exp: Experiment) -> np.ndarray:
    cfg = exp.cfg
    n = len(exp.train)
    if cfg.victim.indices is not None:
        bad = [i for i in cfg.victim.indices if i >= n]
        if bad:
            raise ConfigError("victim.indices", f"index {bad[0]} is outside the training split (0..{n - 1})")
        return np.asarray(cfg.victim.indices, dtype=np.int64)
    need = max(1, cfg.client.local_steps) * cfg.client.batch_size
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(n, size=min(need, n), replace=False))


def simulated_round(cfg: Config, indices, *, clients: int = 1) -> tuple[Observation, Truth, Experiment]:
    """One simulated round without Flower: each of `clients` clients trains on its share of
    `indices` from the same global model; the server sees the example-weighted mean of their
    updates (an aggregate, as SecAgg reveals, when clients > 1). For experiments and benchmarks."""
    exp = build(cfg, partitions=False)
    model = exp.initial_model()
    names = [n for n, _ in model.named_parameters()]
    sent = {k: v.detach().clone() for k, v in {**model.state_dict(), **float_params(model)}.items()}
    updates, replies, used, steps = [], [], [], 1
    for c, idx in enumerate(np.array_split(np.asarray(indices), clients)):
        trained = exp.initial_model()
        res = local_train(trained, exp.train, idx, cfg, rnd=1, client=c)
        updates.append((res.update, res.num_examples))
        replies.append(returned_state(trained, sent, res.update))
        used += res.indices
        steps = res.steps
    total = sum(n for _, n in updates)
    mean = {k: sum(u[k] * n for u, n in updates) / total for k in updates[0][0]}
    received = {k: sent[k] + mean[k] for k in mean}
    for k, v in sent.items():  # the buffers as FedAvg averages them (example-weighted; batch counts: the first's)
        if k not in mean:
            received[k] = (sum(r[k] * n for r, (_, n) in zip(replies, updates)) / total if v.is_floating_point()
                           else replies[0][k])
    obs = make_observation(exp, names, sent, received, {"num-examples": total, "local_steps": steps},
                           num_clients=clients)
    return obs, exp.train.truth(used), exp


def run_attack(cfg: Config, *, out_dir: str | Path | None = None, progress: Progress | None = None
               ) -> list[JobResult]:
    """Train the victim, run every configured attack on its update; with `out_dir`, write a run directory.

    A signal stops the attacks still running; the finished rows, summary and report are kept."""
    progress = progress or Progress()
    defense_sections_in_force(cfg, sweeping=False)
    secagg = secure_aggregation(cfg.client.defenses)
    if secagg is not None:
        raise ConfigError("client.defenses", f"{secagg} lets the server see only the sum of several clients' updates, "
                                             "and `fedattack attack` audits one client's own update; audit secure "
                                             f"aggregation with `fedattack run client.defenses=[{secagg}]`")
    exp = build(cfg, partitions=False)  # one victim: no federation to partition
    idx = victim_indices(exp)
    if "mixup" in cfg.client.defenses and len(set(idx)) < 2:
        raise ConfigError("client.defenses", "mixup mixes each image with another of the client's, and the victim "
                                             "holds one (victim.indices); give it two or more images")
    check_memory(exp, check_model(exp))
    model = exp.initial_model()
    sent = {**dict(model.state_dict()), **float_params(model)}
    sent = {k: v.detach().clone() for k, v in sent.items()}
    result = local_train(model, exp.train, idx, cfg, rnd=1, client=cfg.victim.client)
    received = returned_state(model, sent, result.update)
    results: list[JobResult] = []

    def on_result(res: JobResult) -> None:
        results.append(res)
        progress.result(res)

    dispatcher = LocalDispatcher(max_workers=1)
    progress.auditing(cfg, concurrency=1)
    # one client, one round: what the run directory records (fl.* plays no part here)
    one = replace(cfg, fl=replace(cfg.fl, rounds=1, num_clients=1, clients_per_round=1))
    plan = replace(experiment_plan(exp, client_images=result.num_examples), record=one)
    auditor = Auditor(plan, out_dir=out_dir, dispatcher=dispatcher,
                      on_result=on_result, on_round=lambda row, done, submitted: None)
    auditor.store_args.update(partitions={cfg.victim.client: idx}, expected_rounds=1)
    auditor.on_waiting = progress.waiting
    auditor.heartbeat = 0  # the status line says it
    auditor.on_calibration = progress.calibration
    auditor.on_note = progress.note
    obs = make_observation(exp, auditor.param_names, sent, received,
                           {"num-examples": result.num_examples, "local_steps": result.steps})
    shown = f"{result.indices[:16]}{' ...' if len(result.indices) > 16 else ''}"
    n = len(result.indices)
    steps = (f", {counted(result.steps, 'step')}" if cfg.client.local_steps == 0 else "")
    whole = (f"; batch {cfg.client.batch_size} is more than its {counted(n, 'image')}: each step takes "
             f"{'it' if n == 1 else f'all {n}'}" if cfg.client.batch_size > n else "")
    progress.print(f"victim: {counted(n, 'image')} {shown}, {run_header(cfg.to_dict()).protocol}{steps}{whole}; "
                   f"defense: {auditor.defense}; server: {server_words(cfg.server.mode)}")
    try:
        with shutdown.cooperative():
            shutdown.check()
            with auditor.session():
                auditor.begin_round(1)
                auditor.audit_update(1, cfg.victim.client, obs, exp.train.truth(result.indices),
                                     train_loss=result.loss, epsilon=result.metrics.get("epsilon", float("nan")))
                auditor.finish_jobs()  # says how many it waits for; a status line follows while they run
                auditor.end_round(1)
    except shutdown.Stopped:
        pass
    finally:
        if dispatcher.pending():
            dispatcher.abandon()
    summary = auditor.summary or unsaved_summary(one, results, result.indices, auditor.store_args["batch_norm"])
    progress.summary_table(summary, title="fedattack attack")
    req = shutdown.requested()
    if req is not None and auditor.store is not None:
        n = len(results)
        progress.answer(f"fedattack: stopped by {req.reason}: {counted(n, 'finished result')} in "
                        f"{auditor.store.dir / 'leakage.csv'}; {counted(shutdown.abandoned(), 'unfinished job')} "
                        f"cancelled; report {auditor.store.dir / 'report.html'}")
    shutdown.check()
    return results


def unsaved_summary(cfg: Config, results: list[JobResult], indices, batch_norm: bool):
    """The summary a run directory would give (its exposure and caveats), for an attack without
    `--out`: the victim's samples are owned by `victim.client`."""
    owners, sizes = owners_of({cfg.victim.client: indices})
    images = [row for res in results for row in image_rows(res, owners)]
    header = replace(run_header(cfg.to_dict()), batch_norm=batch_norm)
    return Run(header, results, [], images=images, sizes=sizes, interrupted=interruption([])).summary()
