"""Secure aggregation (Flower SecAgg+): the audited run when the server sees only the sum.

Flower 1.42 runs SecAgg+ only through its legacy workflow: `SecAggPlusWorkflow` inside a
`DefaultWorkflow`, which drives a legacy `flwr.server.strategy.Strategy` through a
`LegacyContext` (ClientManager, FitIns/FitRes), with Flower's `secaggplus_mod` on the clients
expecting legacy FitRes replies. There is no Message-API SecAgg+ workflow or mod.

`LegacyBridge` closes the gap on the server: it is a legacy Strategy that drives an
AuditStrategy (around any Message-API strategy, the user's own included) through the legacy
workflow. `configure_fit` asks the AuditStrategy for its train messages (seeded sampling,
per-node configs) and turns each into FitIns, naming the arrays in the config;
`aggregate_fit` turns each FitRes back into a Message-API reply (named arrays under the
strategy's `arrayrecord_key`, metrics with the example count under its `weighted_by_key`, the
audit-only records unpacked from the metrics) and hands the replies to the AuditStrategy,
which audits them as one aggregate (`aggregate_only`) and lets the wrapped strategy aggregate.
`fedattack.client.secagg.secaggplus_message_mod` closes it on the clients.

What remains of Flower's limits: SecAgg+ hands the strategy, in place of each client's
update, the securely aggregated (example-weighted mean) arrays once per client, so the
wrapped strategy's aggregation sees identical replies (FedAvg-like strategies give the same
aggregate; Krum, median, trimmed mean or Bulyan cannot do what they are for); train configs
travel as legacy Scalars (lists and nested records are dropped); federated evaluation is not
run (centralized evaluation through `evaluate_fn` is). The audit attacks the sum with the
aggregate-scope attacks (`cpa`, `rtf`, ...) and records every round as "aggregate"; no
per-client row can exist.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Result

from fedattack.client.record import unpack_legacy
from fedattack.client.secagg import ARRAY_KEYS, RECORD_KEYS, WEIGHT_KEY
from fedattack.server.audit import AuditStrategy

SCALARS = (bool, int, float, str, bytes)


class LegacyBridge(legacy.Strategy):
    """An AuditStrategy (Message API) driven by Flower's legacy workflow, for SecAgg+."""

    def __init__(self, audit: AuditStrategy, grid: Grid, *, initial_arrays: ArrayRecord,
                 train_config: ConfigRecord | None = None,
                 evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None):
        self.audit = audit
        self.grid = grid
        self.keys = list(initial_arrays.keys())
        self.initial = initial_arrays
        self.train_config = dict(train_config or {})
        self.evaluate_fn = audit.evaluate_fn(evaluate_fn)
        self._sent: dict[int, Message] = {}
        self.result = Result(arrays=initial_arrays)  # what `start_secagg` returns, as Strategy.start does
        audit.aggregate_only = True

    def _arrays(self, parameters) -> ArrayRecord:
        return ArrayRecord({k: Array(a) for k, a in zip(self.keys, parameters_to_ndarrays(parameters))})

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([a.numpy() for a in self.initial.values()])

    def configure_fit(self, server_round, parameters, client_manager):
        a = self.audit
        messages = a.configure_train(server_round, self._arrays(parameters), ConfigRecord(dict(self.train_config)),
                                     self.grid)
        proxies = {int(p.node_id): p for p in client_manager.all().values()}
        out = []
        self._sent = {}
        for m in messages:
            proxy = proxies.get(int(m.metadata.dst_node_id))
            if proxy is None:
                continue
            arrays = m.content[a.arrays_key]
            config = {k: v for k, v in dict(m.content[a.config_key]).items() if isinstance(v, SCALARS)} \
                if a.config_key in m.content.config_records else {}
            config[ARRAY_KEYS] = ",".join(arrays.keys())
            config[RECORD_KEYS] = f"{a.arrays_key},{a.config_key}"
            config[WEIGHT_KEY] = a.weight_key
            out.append((proxy, FitIns(ndarrays_to_parameters([v.numpy() for v in arrays.values()]), config)))
            self._sent[int(m.metadata.dst_node_id)] = m
        return out

    def aggregate_fit(self, server_round, results, failures):
        a = self.audit
        replies = []
        for proxy, fitres in results:
            sent = self._sent[int(proxy.node_id)]
            keys = list(sent.content[a.arrays_key].keys())
            metrics = dict(fitres.metrics)
            content = unpack_legacy(metrics)
            content[a.arrays_key] = ArrayRecord({k: Array(v) for k, v in zip(keys, parameters_to_ndarrays(
                fitres.parameters))})
            content["metrics"] = MetricRecord({**{k: v for k, v in metrics.items()
                                                  if isinstance(v, (int, float)) and not isinstance(v, bool)},
                                               a.weight_key: int(fitres.num_examples)})
            replies.append(Message(content, reply_to=sent))
        a.auditor.record_failures(server_round, len(failures))
        arrays, metrics = a.aggregate_train(server_round, replies)
        if arrays is None:
            return None, {}
        self.keys = list(arrays.keys())
        self.result.arrays = arrays
        if metrics is not None:
            self.result.train_metrics_clientapp[server_round] = metrics
        scalars = {k: v for k, v in dict(metrics or {}).items() if isinstance(v, (int, float))}
        return ndarrays_to_parameters([v.numpy() for v in arrays.values()]), scalars

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # federated evaluation does not run under SecAgg+ here; evaluate_fn does

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        res = self.evaluate_fn(server_round, self._arrays(parameters))
        if res is None:
            return None
        self.result.evaluate_metrics_serverapp[server_round] = res
        metrics = {k: v for k, v in dict(res).items() if isinstance(v, (int, float))}
        loss = next((float(metrics[k]) for k in ("test_loss", "loss", "eval_loss") if k in metrics), 0.0)
        return (loss if loss == loss else 0.0), metrics


ROBUST = (flwr_strategy.FedMedian, flwr_strategy.FedTrimmedAvg, flwr_strategy.Krum, flwr_strategy.MultiKrum,
          flwr_strategy.Bulyan)


def robust_aggregator(strategy: object) -> str:
    """The name of Flower's robust aggregator that `strategy` is ("" for any other strategy)."""
    return type(strategy).__name__ if isinstance(strategy, ROBUST) else ""


def start_secagg(audit: AuditStrategy, grid: Grid, context: Context, *, initial_arrays: ArrayRecord,
                 num_rounds: int, timeout: float = 3600, train_config: ConfigRecord | None = None,
                 evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
                 num_shares: int | float = 1.0, reconstruction_threshold: int | float = 0.5,
                 clipping_range: float = 8.0) -> Result:
    """The audited run under SecAgg+: the same session as `AuditStrategy.start`, the rounds
    driven by Flower's SecAgg+ workflow through `LegacyBridge`. Returns what `strategy.start`
    returns: the final global arrays and the metrics of each round (no federated evaluation's:
    it does not run under SecAgg+ here)."""
    robust = robust_aggregator(audit.strategy)
    if robust:
        log(WARNING, "fedattack: under SecAgg+ %s receives the round's sum once per client, not each client's "
            "update: its robust aggregation has no updates to compare and returns the sum's mean", robust)
    bridge = LegacyBridge(audit, grid, initial_arrays=initial_arrays, train_config=train_config,
                          evaluate_fn=evaluate_fn)
    legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
                                   strategy=bridge)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=num_shares, reconstruction_threshold=reconstruction_threshold, clipping_range=clipping_range,
        timeout=timeout))
    with audit.session(grid, timeout=timeout):
        workflow(grid, legacy_context)
    return bridge.result


__all__ = ["LegacyBridge", "start_secagg"]
