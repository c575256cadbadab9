"""The ServerApp: an audited Flower training run.

`run_audit` is the whole server side: experiment, strategy (wrapped by AuditStrategy),
centralized evaluation, attack dispatch and collection. `app` exposes it as a Flower App
(`flwr run .`): run_config keys `config` (YAML path, empty for the default), `overrides`
(space-separated key=value) and `out` (run directory).
"""

from __future__ import annotations

import shlex
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedattack.client.app import CONFIG_KEY
from fedattack.client.train import evaluate
from fedattack.config import Config, load
from fedattack.experiment import Experiment, build
from fedattack.report.console import Progress
from fedattack.report.store import RunStore
from fedattack.server.audit import Auditor, AuditStrategy, RoundStats
from fedattack.server.dispatch import make_dispatcher
from fedattack.server.strategies import build_strategy


def run_audit(grid: Grid, exp: Experiment, store: RunStore, progress: Progress) -> None:
    """Run cfg.fl.rounds audited rounds on `grid`; every attack result lands in `store`."""
    cfg = exp.cfg
    strategy = build_strategy(cfg)
    dispatcher = make_dispatcher(cfg.audit.gpus_per_job, cfg.audit.max_concurrent)

    def on_result(res):
        store.add_result(res, cfg.audit.save_images)
        progress.result(res)

    auditor = Auditor(exp, dispatcher, on_result)
    audited = AuditStrategy(strategy, auditor)
    model, test_model = exp.initial_model(), exp.initial_model()

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        auditor.poll()
        last = rnd == cfg.fl.rounds
        if rnd == 0 or not (last or (cfg.fl.evaluate_every and rnd % cfg.fl.evaluate_every == 0)):
            loss = acc = float("nan")
        else:
            test_model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(test_model, exp.test)
        if rnd == 0:
            return None
        row = round_row(auditor, rnd, loss, acc)
        store.add_round(row)
        progress.round_done(row, auditor.completed, auditor.submitted)
        return MetricRecord({"test_loss": loss, "test_acc": acc}) if loss == loss else None

    auditor.start_polling()
    try:
        audited.start(grid, ArrayRecord(model.state_dict()), num_rounds=cfg.fl.rounds, timeout=cfg.fl.timeout,
                      train_config=ConfigRecord({CONFIG_KEY: cfg.to_json()}), evaluate_fn=evaluate_fn)
    finally:
        if auditor.dispatcher.pending():
            progress.print(f"waiting for {auditor.dispatcher.pending()} attack jobs ...")
        auditor.finish()


def round_row(auditor: Auditor, rnd: int, test_loss: float, test_acc: float) -> dict:
    """One rounds.csv row from the auditor's round statistics and the test metrics."""
    stats = auditor.rounds.get(rnd) or RoundStats(rnd, time.perf_counter())
    return {"round": rnd, "train_loss": stats.train_loss, "test_loss": test_loss, "test_acc": test_acc,
            "replies": stats.replies, "errors": stats.errors, "audited_clients": stats.audited_clients,
            "jobs": stats.jobs, "scope": stats.scope, "epsilon": stats.epsilon,
            "seconds": time.perf_counter() - stats.started}


def run_header(cfg: Config) -> dict:
    return {"server_mode": cfg.server.mode, "dataset": cfg.data.name, "model": cfg.model.name,
            "strategy": cfg.fl.strategy, "seed": cfg.seed}


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedattack.cli import default_out_dir

    rc = context.run_config
    cfg = load(str(rc.get("config") or "") or None, shlex.split(str(rc.get("overrides", ""))))
    nodes = len(list(grid.get_node_ids()))
    if nodes and nodes != cfg.fl.num_clients:  # the federation decides how many clients exist
        Progress().print(f"fedattack: the federation has {nodes} nodes; using fl.num_clients={nodes}")
        cfg.fl.num_clients = nodes
        cfg.fl.clients_per_round = min(cfg.fl.clients_per_round, nodes)
    exp = build(cfg)
    store = RunStore(str(rc.get("out") or "") or default_out_dir(), cfg.to_yaml(), run_header(cfg))
    try:
        run_audit(grid, exp, store, Progress())
    finally:
        store.finish()
