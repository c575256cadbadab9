"""`fedattack attack`: one simulated client update, every configured attack, one table.

The victim trains `client.local_steps` steps of `client.batch_size` at `client.lr` on
`victim.indices` of the training split (drawn by seed when unset); each attack in
`audit.attacks` runs on the resulting update, exactly as the audit of a run would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedattack.client.train import local_train
from fedattack.errors import ConfigError
from fedattack.experiment import Experiment, build
from fedattack.models import float_params
from fedattack.report.console import Progress
from fedattack.report.store import RunStore
from fedattack.report.summary import summarize
from fedattack.results import JobResult, RoundResult, RunHeader
from fedattack.schema import Config
from fedattack.server.audit import Auditor, make_observation
from fedattack.server.dispatch import LocalDispatcher
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
    exp = build(cfg)
    model = exp.initial_model()
    names = [n for n, _ in model.named_parameters()]
    sent = {k: v.detach().clone() for k, v in {**model.state_dict(), **float_params(model)}.items()}
    updates, used, steps = [], [], 1
    for c, idx in enumerate(np.array_split(np.asarray(indices), clients)):
        res = local_train(exp.initial_model(), exp.train, idx, cfg, rnd=1, client=c)
        updates.append((res.update, res.num_examples))
        used += res.indices
        steps = res.steps
    total = sum(n for _, n in updates)
    mean = {k: sum(u[k] * n for u, n in updates) / total for k in updates[0][0]}
    received = {k: sent[k] + mean[k] if k in mean else v for k, v in sent.items()}
    obs = make_observation(exp, names, sent, received, {"num-examples": total, "local_steps": steps},
                           num_clients=clients)
    return obs, exp.train.truth(used), exp


def run_attack(cfg: Config, *, out_dir: str | Path | None = None, progress: Progress | None = None
               ) -> list[JobResult]:
    """Train the victim, run every configured attack on its update; with `out_dir`, write a run directory."""
    progress = progress or Progress()
    exp = build(cfg)
    idx = victim_indices(exp)
    store = RunStore(out_dir, cfg=cfg, partitions={cfg.victim.client: idx}, expected_rounds=1) if out_dir else None
    model = exp.initial_model()
    sent = {**dict(model.state_dict()), **float_params(model)}
    sent = {k: v.detach().clone() for k, v in sent.items()}
    result = local_train(model, exp.train, idx, cfg, rnd=1, client=cfg.victim.client)
    received = {k: sent[k] + result.update[k] if k in result.update else v for k, v in sent.items()}
    results: list[JobResult] = []

    def on_result(res: JobResult) -> None:
        results.append(res)
        progress.result(res)
        if store:
            store.add_result(res)

    auditor = Auditor(exp, LocalDispatcher(max_workers=1), on_result=on_result)
    obs = auditor.observation(sent, received, {"num-examples": result.num_examples, "local_steps": result.steps})
    progress.print(f"victim: {len(result.indices)} images {result.indices[:16]}{' ...' if len(result.indices) > 16 else ''}, "
                   f"{result.steps} local steps of batch {cfg.client.batch_size} at lr {cfg.client.lr}")
    auditor.submit(1, cfg.victim.client, obs, exp.train.truth(result.indices))
    auditor.finish()
    if store:
        store.add_round(RoundResult(round=1, train_loss=result.loss, replies=1, errors=0, audited_clients=1,
                                    jobs=len(results), scope="client"))
        summary = store.finish()
    else:
        summary = summarize(results, [], RunHeader.from_config(cfg.to_dict()))
    progress.summary_table(summary, title="fedattack attack")
    return results
