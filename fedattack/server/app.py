"""fedattack's own ServerApp: an audited run of a fedattack config, on the public API.

`audit_strategy` turns a config into what any Flower user hands `AuditStrategy`: the
configured strategy, the model, the protocol the server sets (sent to the clients as numeric
train-config values, and read back from there by the audit), the attacks, the data's shape and
normalization, the seed. `run_rounds` is the ServerApp's main: centralized evaluation on the
test split, then `AuditStrategy.start` (or, under `client.defenses=[secagg]`, the same
session through Flower's SecAgg+ workflow). `app` exposes it as a Flower App (`flwr run .`):
run_config keys `config` (YAML path, empty for the default), `overrides` (space-separated
key=value) and `out` (run directory).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedattack.client.app import train_config
from fedattack.client.train import evaluate
from fedattack.config import load
from fedattack.defenses import secure_aggregation
from fedattack.experiment import Experiment, build
from fedattack.report.console import Progress
from fedattack.report.store import default_out_dir
from fedattack.schema import Config
from fedattack.server.audit import AuditStrategy, calibration_notes, server_data
from fedattack.server.protocol import TrainingProtocol
from fedattack.server.secagg import start_secagg
from fedattack.server.strategies import build_strategy

AUDIT_OPTIONS = ("every", "max_clients", "labels", "adaptive", "success_ssim", "max_concurrent", "gpus_per_job",
                 "threads_per_job", "tf32", "save_images", "job_timeout", "calibrate",
                 "calibration_budget", "calibration_cases", "calibration_images",
                 "calibration_iteration_factor", "calibration_restart_factor")


def audit_strategy(cfg: Config, exp: Experiment, *, out_dir: str | Path, progress: Progress | None = None
                   ) -> AuditStrategy:
    """The configured strategy, audited as the config says (everything checked, nothing written)."""
    progress = progress or Progress()
    spec = exp.train.spec
    audit = AuditStrategy(
        build_strategy(cfg), model=exp.model_spec, protocol=TrainingProtocol.of_config(cfg, from_train_config=True),
        attacks={a: cfg.attack(a) for a in cfg.audit.attacks}, out_dir=out_dir, mean=spec.mean, std=spec.std,
        seed=cfg.seed, server_mode=cfg.server.mode, record=cfg, on_result=progress.result,
        on_round=progress.round_done, calibration_data=server_data(exp),
        **{k: getattr(cfg.audit, k) for k in AUDIT_OPTIONS})
    audit.auditor.on_waiting = progress.waiting  # the console's line, and its status line every 30 s
    audit.auditor.heartbeat = 0  # the status line says it
    audit.auditor.on_calibration = progress.calibration
    audit.auditor.on_note = progress.note
    audit.auditor.store_args.update(partitions=dict(enumerate(exp.partitions)))  # built already: not again
    audit.auditor.notes.extend(calibration_notes(exp, audit.auditor.plan.calibration_data))
    return audit


def run_rounds(grid: Grid, context: Context, cfg: Config, exp: Experiment, audit: AuditStrategy) -> None:
    """The ServerApp's main: cfg.fl.rounds audited rounds on `grid`."""
    test_model = exp.initial_model()

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        last = rnd == cfg.fl.rounds
        if rnd == 0 or not (last or (cfg.fl.evaluate_every and rnd % cfg.fl.evaluate_every == 0)):
            return None
        test_model.load_state_dict({k: v for k, v in arrays.to_torch_state_dict().items()
                                    if k in test_model.state_dict()})
        loss, acc = evaluate(test_model, exp.test)
        return MetricRecord({"test_loss": loss, "test_acc": acc})

    initial = ArrayRecord(exp.initial_model().state_dict())
    secagg = secure_aggregation(cfg.client.defenses)
    if secagg is not None:
        p = cfg.defense(secagg)
        start_secagg(audit, grid, context, initial_arrays=initial, num_rounds=cfg.fl.rounds, timeout=cfg.fl.timeout,
                     train_config=train_config(cfg), evaluate_fn=evaluate_fn, num_shares=p.num_shares,
                     reconstruction_threshold=p.reconstruction_threshold, clipping_range=p.clipping_range)
    else:
        audit.start(grid, initial, num_rounds=cfg.fl.rounds, timeout=cfg.fl.timeout, train_config=train_config(cfg),
                    evaluate_fn=evaluate_fn)


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
    audit = audit_strategy(cfg, exp, out_dir=str(rc.get("out") or "") or default_out_dir())
    run_rounds(grid, context, cfg, exp, audit)
