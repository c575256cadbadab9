"""AuditStrategy: wrap any Flower strategy; audit every client update before aggregation.

    strategy = FedAvg(...)                       # or your own Strategy subclass
    audited = AuditStrategy(strategy, auditor)   # unchanged strategy inside
    audited.start(grid, arrays, num_rounds=3)

Flow per round: `configure_train` asks the wrapped strategy for its messages and remembers
the arrays each node was sent; `aggregate_train` takes the replies, strips the audit-only
records, turns each reply into an Observation (update = returned - sent weights), submits
attack jobs, and hands the replies to the wrapped strategy's `aggregate_train`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedattack.attacks import ATTACKS
from fedattack.client.app import AUDIT_KEY
from fedattack.experiment import Experiment
from fedattack.results import JobResult, RoundResult, RoundStats
from fedattack.server.dispatch import Dispatcher
from fedattack.server.jobs import AttackJob
from fedattack.threat import Observation, Protocol, Truth


def describe_defenses(exp: Experiment) -> str:
    """'none' or e.g. 'clip(bound=1.0)+gaussian(sigma=0.01)' for report rows."""
    parts = []
    for d in exp.defense_settings():
        args = ",".join(f"{k}={v}" for k, v in d.params.items())
        parts.append(f"{d.name}({args})" if args else d.name)
    return "+".join(parts) or "none"


def make_observation(exp: Experiment, param_names: list[str], sent: dict[str, torch.Tensor],
                     received: dict[str, torch.Tensor], metrics: dict[str, Any], num_clients: int = 1) -> Observation:
    """What the server holds about one reply: sent weights, update, and the protocol."""
    glob = {k: sent[k].float() for k in param_names}
    update = {k: received[k].float() - glob[k] for k in param_names}
    buffers = {k: v for k, v in sent.items() if k not in glob}
    c = exp.cfg.client
    protocol = Protocol(lr=c.lr, local_steps=int(metrics.get("local_steps", c.local_steps)),
                        local_epochs=c.local_epochs, batch_size=c.batch_size,
                        num_examples=int(metrics.get("num-examples", 0)), momentum=c.momentum,
                        defenses=exp.defense_settings())
    return Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update,
                       protocol=protocol, buffers=buffers, num_clients=num_clients, server_mode=exp.cfg.server.mode)


class Auditor:
    """Turns replies into attack jobs and routes results to a sink."""

    def __init__(self, exp: Experiment, dispatcher: Dispatcher, *, on_result: Callable[[JobResult], None],
                 on_submit: Callable[[int, int | str, str], None] = lambda r, c, a: None):
        self.exp = exp
        self.cfg = exp.cfg
        self.dispatcher = dispatcher
        self.on_result = on_result
        self.on_submit = on_submit
        model = exp.initial_model()
        self.param_names = [n for n, _ in model.named_parameters()]
        # a malicious server re-sends its crafted blocks (e.g. the imprint block) every round
        prefixes = tuple(f"{ATTACKS.get(a).model_extension}." for a in self.cfg.audit.attacks
                         if self.cfg.server.mode == "malicious" and ATTACKS.get(a).model_extension)
        self.malicious_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}
        self.defense = describe_defenses(exp)
        self.rounds: dict[int, RoundStats] = {}
        self.submitted = 0
        self.completed = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_error: BaseException | None = None  # what the background poller raised, re-raised by finish()

    # -- what to audit ------------------------------------------------------------
    def audits_round(self, rnd: int) -> bool:
        every = self.cfg.audit.every
        return bool(self.cfg.audit.attacks) and every > 0 and (rnd - 1) % every == 0

    def attacks_for(self, scope: str) -> list[str]:
        return [a for a in self.cfg.audit.attacks if ATTACKS.get(a).scope in (scope, "any")]

    # -- building observations ------------------------------------------------------
    def observation(self, sent: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
                    metrics: dict[str, Any], num_clients: int = 1) -> Observation:
        return make_observation(self.exp, self.param_names, sent, received, metrics, num_clients)

    def variants(self, name: str) -> list[bool]:
        """adaptive flags to run attack `name` with, per audit.adaptive."""
        mode = self.cfg.audit.adaptive
        if mode == "off" or not ATTACKS.get(name).adaptive:
            return [False]
        return [True] if mode == "on" else [False, True]

    def submit(self, rnd: int, client: int | str, obs: Observation, truth: Truth, scope: str = "client",
               epsilon: float = float("nan")) -> int:
        n = 0
        cid = client if isinstance(client, int) else 0
        for k, name in enumerate(self.attacks_for(scope)):
            for adaptive in self.variants(name):
                job = AttackJob(round=rnd, client=client, attack=name, params=self.cfg.attack(name), observation=obs,
                                seed=self.cfg.seed * 1_000_003 + rnd * 1009 + cid * 31 + k,
                                labels=self.cfg.audit.labels, adaptive=adaptive, defense=self.defense,
                                threads=self.cfg.audit.threads_per_job, tf32=self.cfg.audit.tf32,
                                success_ssim=self.cfg.audit.success_ssim,
                                success_margin=self.cfg.audit.success_margin,
                                lpips_weights=self.cfg.audit.lpips_weights,
                                epsilon=epsilon)
                self.dispatcher.submit(job, truth)
                self.on_submit(rnd, client, name)
                n += 1
        self.submitted += n
        return n

    def observe(self, rnd: int, sent: dict[int, ArrayRecord], replies: list[Message]) -> list[Message]:
        """Audit one round's train replies; return them with audit records removed."""
        with self._lock:
            return self._observe(rnd, sent, replies)

    def _observe(self, rnd: int, sent: dict[int, ArrayRecord], replies: list[Message]) -> list[Message]:
        stats = self.rounds.setdefault(rnd, RoundStats(rnd, time.perf_counter()))
        good = [r for r in replies if not r.has_error()]
        stats.replies, stats.errors = len(good), len(replies) - len(good)
        records = []
        for r in good:
            audit = r.content[AUDIT_KEY] if AUDIT_KEY in r.content else None
            if audit is not None:
                del r.content[AUDIT_KEY]  # nobody downstream sees the ground truth record
            records.append((r, audit))
        losses = [(float(m.get("train_loss", np.nan)), float(m.get("num-examples", 1)))
                  for m in (_metrics(r) for r, _ in records) if m]
        if losses:
            v, w = np.array(losses).T
            stats.train_loss = float(np.average(v, weights=w)) if w.sum() > 0 else float(np.mean(v))
        eps = [float(m["epsilon"]) for m in (_metrics(r) for r, _ in records) if "epsilon" in m]
        if eps:  # DP: the largest privacy loss among this round's clients
            stats.epsilon = max(eps)
        if not self.audits_round(rnd):
            return replies
        chosen = sorted(records, key=lambda ra: int(ra[1]["partition-id"]) if ra[1] is not None else 1 << 30)
        if self.cfg.audit.max_clients:
            chosen = chosen[: self.cfg.audit.max_clients]
        for reply, audit in chosen:
            if audit is None:
                continue
            arrays = sent.get(reply.metadata.src_node_id)
            if arrays is None:
                continue
            obs = self.observation(arrays.to_torch_state_dict(), _arrays(reply).to_torch_state_dict(),
                                   _metrics(reply))
            truth = self.exp.train.truth(list(audit["indices"]))
            stats.jobs += self.submit(rnd, int(audit["partition-id"]), obs, truth,
                                      epsilon=float(_metrics(reply).get("epsilon", float("nan"))))
            stats.audited_clients += 1
        return replies

    def poll(self) -> None:
        with self._lock:
            for res in self.dispatcher.poll():
                self.completed += 1
                self.on_result(res)

    def round_result(self, rnd: int, *, test_loss: float, test_acc: float) -> RoundResult:
        """Round `rnd` as rounds.csv records it: the counts so far and the test metrics."""
        stats = self.rounds.get(rnd) or RoundStats(rnd, time.perf_counter())
        return stats.result(test_loss=test_loss, test_acc=test_acc, now=time.perf_counter())

    def start_polling(self, interval: float = 0.5) -> None:
        """Collect results in the background while training blocks on the grid."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except BaseException as exc:  # noqa: BLE001 - handed to finish(), in the caller's thread
                    self._poll_error = exc
                    return

        self._poller = threading.Thread(target=loop, name="fedattack-audit-poller", daemon=True)
        self._poller.start()

    def finish(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        if self._poll_error is not None:
            raise self._poll_error
        with self._lock:
            self.dispatcher.drain(on_result=self._deliver)  # each result as it arrives, not all at the end

    def _deliver(self, res: JobResult) -> None:
        self.completed += 1
        self.on_result(res)


def _arrays(msg: Message) -> ArrayRecord:
    """The (single) ArrayRecord of a message, whatever key the strategy uses."""
    return next(iter(msg.content.array_records.values()))


def _metrics(msg: Message) -> dict:
    records = msg.content.metric_records
    return dict(next(iter(records.values()))) if records else {}


class AuditStrategy(Strategy):
    """A Flower Strategy that audits client updates, then delegates to `strategy`."""

    def __init__(self, strategy: Strategy, auditor: Auditor):
        self.strategy = strategy
        self.auditor = auditor
        self._sent: dict[int, ArrayRecord] = {}

    def __getattr__(self, name: str) -> Any:  # expose the wrapped strategy's attributes
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.auditor.poll()
        self.auditor.rounds[server_round] = RoundStats(server_round, time.perf_counter())
        if self.auditor.malicious_state:
            arrays = ArrayRecord({**arrays.to_torch_state_dict(), **self.auditor.malicious_state})
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent = {m.metadata.dst_node_id: _arrays(m) for m in messages if m.content.array_records}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.auditor.observe(server_round, self._sent, list(replies))
        self.auditor.poll()
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if metrics is not None and "flowerdp_epsilon" in metrics:  # central DP: the server's accountant
            self.auditor.rounds[server_round].epsilon = float(metrics["flowerdp_epsilon"])
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
