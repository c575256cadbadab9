"""The ServerApp: an audited Flower training run.

`run_audit` is the whole server side: experiment, strategy (wrapped by AuditStrategy),
centralized evaluation, attack dispatch and collection. `app` exposes it as a Flower App
(`flwr run .`): run_config keys `config` (YAML path, empty for the default), `overrides`
(space-separated key=value) and `out` (run directory).
"""

from __future__ import annotations

import shlex

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedattack.client.app import CONFIG_KEY
from fedattack.client.train import evaluate
from fedattack.config import load
from fedattack.experiment import Experiment, build
from fedattack.report.console import Progress
from fedattack.report.store import RunStore, default_out_dir
from fedattack.server.audit import Auditor, AuditStrategy
from fedattack.server.dispatch import make_dispatcher
from fedattack.server.strategies import build_strategy


def run_audit(grid: Grid, exp: Experiment, store: RunStore, progress: Progress) -> None:
    """Run cfg.fl.rounds audited rounds on `grid`; every attack result lands in `store`."""
    cfg = exp.cfg
    strategy = build_strategy(cfg)
    dispatcher = make_dispatcher(gpus_per_job=cfg.audit.gpus_per_job, max_concurrent=cfg.audit.max_concurrent)

    def on_result(res):
        store.add_result(res)
        progress.result(res)

    auditor = Auditor(exp, dispatcher, on_result=on_result)
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
        row = auditor.round_result(rnd, test_loss=loss, test_acc=acc)
        store.add_round(row)
        progress.round_done(row, auditor.completed, auditor.submitted)
        return MetricRecord({"test_loss": loss, "test_acc": acc}) if loss == loss else None

    auditor.start_polling()
    try:
        audited.start(grid, ArrayRecord(model.state_dict()), num_rounds=cfg.fl.rounds, timeout=cfg.fl.timeout,
                      train_config=ConfigRecord({CONFIG_KEY: cfg.to_json()}), evaluate_fn=evaluate_fn)
    finally:
        if auditor.dispatcher.pending():
            progress.waiting(auditor.dispatcher.pending())
        auditor.finish()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = load(str(rc.get("config") or "") or None, shlex.split(str(rc.get("overrides", ""))))
    nodes = len(list(grid.get_node_ids()))
    if nodes and nodes != cfg.fl.num_clients:  # the federation decides how many clients exist
        Progress().print(f"fedattack: the federation has {nodes} nodes; using fl.num_clients={nodes}")
        cfg.fl.num_clients = nodes
        cfg.fl.clients_per_round = min(cfg.fl.clients_per_round, nodes)
    exp = build(cfg)
    store = RunStore(str(rc.get("out") or "") or default_out_dir(), cfg=cfg)
    try:
        run_audit(grid, exp, store, Progress())
    finally:
        store.finish()
