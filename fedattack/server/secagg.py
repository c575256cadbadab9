"""Secure aggregation (Flower SecAgg+): the server sees only the sum of the updates.

Flower 1.41 runs SecAgg+ through its legacy workflow (`SecAggPlusWorkflow` with the
`secaggplus_mod` client mod and a legacy strategy), so with `client.defenses=[secagg]` the
simulation runs this module's ServerApp main and ClientApp instead of the Message-API ones.
The strategy's `aggregate_fit` receives the securely aggregated (weighted-average) weights
in every result: the audit attacks that aggregate with the aggregate-scope attacks (e.g.
`cpa`, `rtf`) and records the round as "aggregate only"; no per-client row can exist.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedattack.client.app import CONFIG_KEY
from fedattack.client.train import evaluate, local_train
from fedattack.errors import ConfigError
from fedattack.experiment import Experiment, from_config_json
from fedattack.registry import Registry, call_with_known
from fedattack.report.console import Progress
from fedattack.report.store import RunStore
from fedattack.results import RoundStats
from fedattack.server.audit import Auditor
from fedattack.server.dispatch import make_dispatcher

LEGACY_STRATEGIES: Registry[type] = Registry("strategy (with secagg)", "fl.strategy")
for _name, _cls in {"fedavg": legacy.FedAvg, "fedprox": legacy.FedProx, "fedadam": legacy.FedAdam,
                    "fedadagrad": legacy.FedAdagrad, "fedyogi": legacy.FedYogi, "fedavgm": legacy.FedAvgM,
                    "fedmedian": legacy.FedMedian, "fedtrimmedavg": legacy.FedTrimmedAvg}.items():
    LEGACY_STRATEGIES.register(_name, _cls, doc=f"flwr legacy {_cls.__name__}")


def _state_from_ndarrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    keys = list(model.state_dict())
    return {k: torch.as_tensor(np.asarray(a)) for k, a in zip(keys, arrays)}


class _Client(NumPyClient):
    def __init__(self, partition_id: int):
        self.pid = partition_id

    def fit(self, parameters, config):
        exp = from_config_json(str(config[CONFIG_KEY]))
        torch.set_num_threads(max(1, int(exp.cfg.fl.client_cpus)))
        model = exp.initial_model()
        sent = _state_from_ndarrays(model, parameters)
        model.load_state_dict(sent)
        rnd = int(config.get("server-round", 0))
        result = local_train(model, exp.train, exp.partitions[self.pid], exp.cfg, rnd=rnd, client=self.pid)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, u in result.update.items():
            state[k] = sent[k] + u
        metrics = {"train_loss": result.loss, "local_steps": result.steps, "partition-id": self.pid,
                   "audit-indices": ",".join(str(i) for i in result.indices)}
        return [v.cpu().numpy() for v in state.values()], result.num_examples, metrics


def _client_fn(context: Context):
    return _Client(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])


class SecAggAudit(legacy.Strategy):
    """Wraps a legacy Flower strategy; audits the aggregate SecAgg+ reveals, then delegates."""

    def __init__(self, strategy: legacy.Strategy, auditor: Auditor):
        self.strategy = strategy
        self.auditor = auditor
        self._sent = None

    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        self._sent = parameters
        self.auditor.rounds[server_round] = RoundStats(server_round, time.perf_counter(), scope="aggregate")
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        stats = self.auditor.rounds.setdefault(server_round, RoundStats(server_round, time.perf_counter()))
        stats.scope, stats.replies, stats.errors = "aggregate", len(results), len(failures)
        indices, losses, weights = [], [], []
        for _, res in results:  # the audit-only records never reach the strategy
            indices.extend(int(i) for i in str(res.metrics.pop("audit-indices", "")).split(",") if i)
            losses.append(float(res.metrics.get("train_loss", np.nan)))
            weights.append(res.num_examples)
        if losses:
            stats.train_loss = float(np.average(losses, weights=weights))
        if results and self.auditor.audits_round(server_round) and self.auditor.attacks_for("aggregate"):
            model = self.auditor.exp.initial_model()
            sent = _state_from_ndarrays(model, parameters_to_ndarrays(self._sent))
            agg = _state_from_ndarrays(model, parameters_to_ndarrays(results[0][1].parameters))
            metrics = {"num-examples": sum(weights), "local_steps": results[0][1].metrics.get("local_steps", 0)}
            obs = self.auditor.observation(sent, agg, metrics, num_clients=len(results))
            truth = self.auditor.exp.train.truth(indices)
            stats.jobs += self.auditor.submit(server_round, "aggregate", obs, truth, scope="aggregate")
            stats.audited_clients = len(results)
        self.auditor.poll()
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)


def check_strategy(cfg) -> None:
    if ":" in cfg.fl.strategy or cfg.fl.strategy not in LEGACY_STRATEGIES.names():
        allowed = ", ".join(LEGACY_STRATEGIES.names())
        raise ConfigError("fl.strategy", f"with secagg the strategy runs in Flower's legacy workflow; allowed: {allowed}")


def run_secagg_audit(grid: Grid, context: Context, exp: Experiment, store: RunStore, progress: Progress) -> None:
    """The audited run under SecAgg+: same rounds, same store, aggregate-only audit."""
    cfg = exp.cfg
    check_strategy(cfg)
    dispatcher = make_dispatcher(gpus_per_job=cfg.audit.gpus_per_job, max_concurrent=cfg.audit.max_concurrent)

    def on_result(res):
        store.add_result(res)
        progress.result(res)

    auditor = Auditor(exp, dispatcher, on_result=on_result)
    if not auditor.attacks_for("aggregate"):
        progress.print("secagg: the server sees only the aggregate; none of the configured attacks targets "
                       "aggregates (e.g. cpa, rtf), so no attack runs")
    model, test_model = exp.initial_model(), exp.initial_model()

    def evaluate_fn(rnd, ndarrays, config):
        auditor.poll()
        if rnd == 0:
            return None
        test_model.load_state_dict(_state_from_ndarrays(test_model, ndarrays))
        loss, acc = evaluate(test_model, exp.test)
        row = auditor.round_result(rnd, test_loss=loss, test_acc=acc)
        store.add_round(row)
        progress.round_done(row, auditor.completed, auditor.submitted)
        return loss, {"test_acc": acc}

    n, k = cfg.fl.num_clients, cfg.fl.clients_per_round
    base = call_with_known(LEGACY_STRATEGIES.get(cfg.fl.strategy), {
        "fraction_fit": k / n, "min_fit_clients": k, "min_available_clients": n, "fraction_evaluate": 0.0,
        "min_evaluate_clients": 0, "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": lambda rnd: {CONFIG_KEY: cfg.to_json(), "server-round": rnd},
        "initial_parameters": ndarrays_to_parameters([v.cpu().numpy() for v in model.state_dict().values()]),
        **cfg.fl.strategy_args})
    params = cfg.defense("secagg")
    legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.fl.rounds,
                                                                         round_timeout=cfg.fl.timeout),
                                   strategy=SecAggAudit(base, auditor))
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=params.num_shares, reconstruction_threshold=params.reconstruction_threshold,
        clipping_range=getattr(params, "clipping_range", 8.0)))
    auditor.start_polling()
    try:
        workflow(grid, legacy_context)
    finally:
        auditor.finish()
