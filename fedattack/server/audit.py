"""The audit: wrap any Flower (Message API) strategy; attack every client update it receives.

    from fedattack import AuditStrategy, TrainingProtocol

    strategy = AuditStrategy(
        FedAvg(fraction_train=0.5),                    # your strategy, unchanged inside
        model=Net(),                                   # your model (or a factory)
        protocol=TrainingProtocol(local_epochs=1, batch_size=32, config_keys={"lr": "lr"}),
        attacks=["idlg", "invgrad"],
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        out_dir="runs/audit",
    )
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3, train_config=ConfigRecord({"lr": 0.1}))

One skeleton runs every audited run (`fedattack run`, `flwr run .`, a user's ServerApp, and
SecAgg+ through server/secagg.py): `AuditStrategy.start` opens an `Auditor` session, runs the
rounds, then collects the attack jobs still running and writes the run directory. Per round:
`configure_train` asks the wrapped strategy for its messages (sampling seeded, see
server/sampling.py) and remembers the arrays and train config each node was sent;
`aggregate_train` removes the audit-only records from the replies, hands each reply to the
Auditor (update = returned - sent weights; protocol from the train config), and passes the
replies to the wrapped strategy's `aggregate_train`.

The Auditor owns the round statistics, decides what to attack (`attacks_for`) and with which
parameters (`params_for`: the server-side place to calibrate attack hyperparameters), builds
each Observation, and routes results to the run directory. The Truth (the client's recorded
images) goes from the reply's audit-only record to the scorer only; no attack receives it.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedattack import shutdown
from fedattack.attacks import ATTACKS, AttackContext, needing_malicious_server
from fedattack.attacks.base import AttackSpec
from fedattack.attacks.calibrate import band_words, calibrate, calibration_key, judges
from fedattack.client.record import AUDIT_KEY, TRUTH_KEY, ClientRecord, pop_record
from fedattack.client.train import schedule
from fedattack.config import from_dict
from fedattack.data import load_dataset
from fedattack.defenses import DEFENSES, audit_notes
from fedattack.errors import AttackFailure, ConfigError, FedattackError
from fedattack.experiment import Experiment
from fedattack.models import batch_norm_layers, build_model
from fedattack.models.generator import check_checkpoint
from fedattack.models.user import user_model_spec
from fedattack.registry import describe
from fedattack.report.store import RunStore, check_writable, default_out_dir
from fedattack.report.summary import secagg_scope
from fedattack.results import (STRETCHED, SWITCHES, JobResult, RoundResult, RoundStats, describe_calibration,
                               unsimulated)
from fedattack.schema import AuditConfig
from fedattack.server.dispatch import Dispatcher, make_dispatcher
from fedattack.server.interrupt import interruption
from fedattack.server.jobs import AttackJob
from fedattack.server.protocol import TrainingProtocol
from fedattack.server.sampling import SeededSampling
from fedattack.text import counted, plural
from fedattack.validate import first_repeat
from fedattack.strategies import strategy_problem
from fedattack.threat import DataSpec, ModelSpec, Observation, Protocol, Truth

AUDIT_RECORDS = (AUDIT_KEY, TRUTH_KEY)
NO_RECORD = ("the client sent no audit record (no fedattack audit_mod on its train function, as in a real "
             "deployment): reconstructions and recovered labels only, no scores")
# metric keys the round table reads test results from (server-side evaluate_fn first, then clients')
ACC_KEYS = ("test_acc", "accuracy", "acc", "eval_acc", "test_accuracy")
LOSS_KEYS = ("test_loss", "loss", "eval_loss")


@dataclass
class AuditPlan:
    """What the server knows and what to do with it: everything an Auditor needs."""

    model: ModelSpec
    data: DataSpec
    protocol: TrainingProtocol
    attacks: dict[str, Any]  # attack name -> its parameters (the attack's params dataclass)
    options: AuditConfig
    seed: int = 0
    server_mode: str = "honest"  # honest | malicious (the server sends the model's extension blocks)
    record: Any = None  # what the run directory's config.yaml records (a Config, or an AppRecord)
    calibration_data: tuple[torch.Tensor, torch.Tensor] | None = None  # the server's own images and labels


def experiment_plan(exp: Experiment, *, client_images: int | None = None) -> AuditPlan:
    """The audit a fedattack config describes (for runs without Flower: `fedattack attack`, whose
    one client trains on `client_images` images)."""
    cfg = exp.cfg
    return AuditPlan(model=exp.model_spec, data=exp.train.spec, protocol=TrainingProtocol.of_config(cfg),
                     attacks={a: cfg.attack(a) for a in cfg.audit.attacks}, options=cfg.audit, seed=cfg.seed,
                     server_mode=cfg.server.mode, record=cfg,
                     calibration_data=server_data(exp, client_images=client_images))


def calibration_source(record: Any) -> str:
    """Where the images calibration simulates clients on come from, in words (calibration.json's
    `data`): a fedattack config's calibration dataset or its own test split; an app's, what it gave."""
    audit, data = getattr(record, "audit", None), getattr(record, "data", None)
    if audit is None or data is None:
        return "the images given to AuditStrategy(calibration_data=...)"
    return f"the test split of {getattr(audit, 'calibration_data', None) or data.name}"


def trained_images(exp: Experiment) -> int:
    """The most images any client of `exp`'s partitions trains on in a round (0 without
    partitions): the distinct images of its batches (fedattack.client.train.schedule)."""
    return max((len(np.unique(np.concatenate(schedule(p, exp.cfg, 1, c)))) for c, p in enumerate(exp.partitions)),
               default=0)


def server_data(exp: Experiment, *, client_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What calibration may use (audit.calibrate): images of the test split, which no client
    trains on, as model inputs with their labels; None when calibration is off. Calibration
    simulates clients as large as the largest one (`client_images`, by default from the
    partitions): `audit.calibration_samples` below that is refused."""
    cfg = exp.cfg
    if not cfg.audit.calibrate:
        return None
    test = exp.test
    if cfg.audit.calibration_data is not None:  # another dataset the server holds, at the run's image size
        other = replace(cfg.data, name=cfg.audit.calibration_data, root=cfg.audit.calibration_root or cfg.data.root,
                        image_key=None, label_key=None)
        try:
            test = load_dataset(other, seed=cfg.seed).test
        except FedattackError as exc:  # the loader names data.root, which here is audit.calibration_root
            said = exc.message if isinstance(exc, ConfigError) else str(exc)  # the field is audit.calibration_data
            said = said.removeprefix("data.name: ").replace("data.name=", "audit.calibration_data=")
            said = said.replace("data.root", "audit.calibration_root" if cfg.audit.calibration_root else
                                "data.root (or audit.calibration_root)")
            raise ConfigError("audit.calibration_data", f"cannot load {other.name!r}: {said}") from None
        want, got = exp.train.spec, test.spec
        if tuple(got.shape) != tuple(want.shape) or got.num_classes > want.num_classes:
            raise ConfigError("audit.calibration_data", f"{other.name!r} gives {'x'.join(map(str, got.shape))} images of "
                                                        f"{got.num_classes} classes; the model takes "
                                                        f"{'x'.join(map(str, want.shape))} images of {want.num_classes} "
                                                        "classes (data.channels and data.image_size apply to both)")
    n = min(len(test), cfg.audit.calibration_samples)
    need = trained_images(exp) if client_images is None else client_images
    if n < need <= len(test):
        raise ConfigError("audit.calibration_samples", f"calibration simulates clients of {need} images (as many as "
                                                       f"the largest client trains on); allowed: {need} or more")
    idx = np.sort(np.random.default_rng(cfg.seed).choice(len(test), size=n, replace=False))
    # as the model's inputs: the run's own normalization, whatever dataset the pixels come from
    return exp.train.spec.normalize(test.pixels(idx)), torch.as_tensor(test.targets[idx], dtype=torch.long)


def calibration_notes(exp: Experiment, data: tuple[torch.Tensor, torch.Tensor] | None) -> list[str]:
    """What calibration cannot do with the server's data, said before the first round: a client
    larger than that data cannot be simulated, and its updates are attacked with the configured
    parameters (each such job's calibration says so again as it is skipped)."""
    if data is None or not any(ATTACKS.get(a).tunable for a in exp.cfg.audit.attacks):
        return []
    have, need = len(data[1]), trained_images(exp)
    if need <= have:
        return []
    return [f"calibration: the server's data holds {have} images and the largest client trains on {need}; "
            f"updates of clients of more than {have} images are attacked with the configured parameters "
            "(audit.calibration_data can name a larger dataset)"]


def make_observation(exp: Experiment, param_names: list[str], sent: dict[str, torch.Tensor],
                     received: dict[str, torch.Tensor], metrics: Mapping[str, Any], num_clients: int = 1
                     ) -> Observation:
    """What a fedattack server holds about one simulated reply (`metrics`: the client's
    "num-examples" and, where reported, "local_steps")."""
    protocol = TrainingProtocol.of_config(exp.cfg).protocol(None, int(metrics.get("num-examples", 0)))
    if "local_steps" in metrics:
        protocol = replace(protocol, local_steps=int(metrics["local_steps"]))
    glob = {k: sent[k].float() for k in param_names}
    update = {k: received[k].float() - glob[k] for k in param_names}
    buffers = {k: v for k, v in sent.items() if k not in glob}
    return Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update,
                       protocol=protocol, buffers=buffers, returned_buffers=returned(buffers, received),
                       num_clients=num_clients, server_mode=exp.cfg.server.mode)


def returned(buffers: Mapping[str, Any], received: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The buffers a reply holds back (BatchNorm's running statistics after local training)."""
    return {k: torch.as_tensor(received[k]) for k in buffers if k in received}


@dataclass
class AppRecord:
    """The config.yaml of an audit of a user's own app (duck-types the Config a RunStore records)."""

    raw: dict
    audit: AuditConfig

    def to_dict(self) -> dict:
        return self.raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


class Auditor:
    """Turns replies into attack jobs, keeps the round statistics, routes results to the run directory."""

    def __init__(self, plan: AuditPlan, *, out_dir: str | Path | None, dispatcher: Dispatcher | None = None,
                 on_result: Callable[[JobResult], None] | None = None,
                 on_round: Callable[[RoundResult, int, int], None] | None = None):
        self.plan = plan
        self.out_dir = Path(out_dir) if out_dir is not None else None  # None: results go to on_result only
        self._dispatcher = dispatcher
        self.on_result = on_result or log_result
        self.on_round = on_round or log_round
        self.on_waiting: Callable[[int], None] = lambda n: log(INFO, "fedattack: waiting for %s ...",
                                                                  counted(n, "attack job"))
        self.heartbeat = 60.0  # seconds between "still waiting" lines while the last jobs run (0: none)
        # calibration's progress: each message, and its log level (WARNING where it was skipped)
        self.on_calibration: Callable[..., None] = lambda msg, level=INFO: log(level, "fedattack: %s", msg)
        # what the user should know before the first job (a generator trained on other images)
        self.on_note: Callable[[str], None] = lambda msg: log(WARNING, "fedattack: %s", msg)
        self.notes = [*generator_fit(plan.attacks, plan.data), *audit_notes(d.name for d in plan.protocol.settings())]
        model = build_model(plan.model, seed=plan.seed)
        for name, params in plan.attacks.items():  # parameters that name what the model lacks
            spec = ATTACKS.find(name)
            if spec is not None and spec.check_model is not None:
                spec.check_model(model, params)
        self.param_names = [n for n, _ in model.named_parameters()]
        self.param_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        # a malicious server re-sends its crafted blocks (e.g. the imprint block) every round
        prefixes = tuple(f"{ATTACKS.get(a).model_extension}." for a in plan.attacks
                         if plan.server_mode == "malicious" and ATTACKS.get(a).model_extension)
        self.malicious_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}
        self.defense = plan.protocol.describe_defenses()
        self.rounds: dict[int, RoundStats] = {}
        self.submitted = 0
        self.completed = 0
        self.store: RunStore | None = None
        self._calibrations: dict[tuple, Any] = {}
        self._calibration_lock = threading.Lock()
        self.calibrations: list[dict] = []  # what calibration.json holds
        # RunStore's partitions and expected_rounds, where known, and whether the model trains BatchNorm
        self.store_args: dict[str, Any] = {"batch_norm": bool(batch_norm_layers(model)),
                                           "num_classes": plan.model.num_classes}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # jobs are waiting to be handed to the dispatcher
        self._queued: list[tuple[AttackJob, Truth | None]] = []
        self._queue_lock = threading.Lock()
        # dispatcher calls and result delivery; taken before self._lock where both are held, never after
        self._dispatch_lock = threading.RLock()
        self._poller: threading.Thread | None = None
        self._poll_error: BaseException | None = None  # what the background poller raised, re-raised by finish()
        self._warned: set[str] = set()
        self.summary = None  # the run's Summary, once the session has written the report

    # -- the run ------------------------------------------------------------------
    @property
    def dispatcher(self) -> Dispatcher:
        """Ray tasks when this process is connected to Ray by the first submission, else a local pool."""
        if self._dispatcher is None:
            self._dispatcher = make_dispatcher(gpus_per_job=self.plan.options.gpus_per_job,
                                               max_concurrent=self.plan.options.max_concurrent)
        return self._dispatcher

    def warm_up(self) -> None:
        """Where attack jobs will run as Ray tasks, start a worker for them now, while the
        first round trains (a worker's start and imports take seconds)."""
        if self.plan.attacks and self.plan.options.every > 0:
            warm = getattr(self.dispatcher, "warm", None)
            if warm is not None:
                warm()

    def open_store(self) -> RunStore | None:
        """The run directory, created when the first round has been checked (nothing half-written before)."""
        with self._lock:
            if self.store is None and self.out_dir is not None:
                self.store = RunStore(self.out_dir, cfg=self.plan.record, **self.store_args)
            return self.store

    @contextmanager
    def session(self, scope: str = "client") -> Iterator["Auditor"]:
        """An audited run: results collected in the background meanwhile; at the end the jobs
        still running are collected and the run directory's summary and report written.
        `scope` "aggregate": the server will see sums of updates only (SecAgg+), which an app's
        config.yaml records (`server.sees`; fedattack's own runs record `client.defenses`)."""
        if scope == "aggregate" and isinstance(self.plan.record, AppRecord):
            self.plan.record.raw.setdefault("server", {})["sees"] = "sums"
            # the rows name the defense as the report's header does (results.describe_defenses)
            self.defense = "SecAgg+" if self.defense == "none" else f"{self.defense}+SecAgg+"
        for note in [*self.notes, self.scope_note(scope), self.adaptive_note(scope), self.calibration_note()]:
            if note:
                self.on_note(note)
        self.start_polling()
        errors: list[BaseException] = []
        abandoned_before = shutdown.abandoned()  # an app's process may run several sessions
        try:
            yield self
        except shutdown.Stopped:
            raise
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            try:
                self.finish_jobs()
            finally:
                if self.store is not None:
                    self.summary = self.store.finish(interrupted=interruption(errors, abandoned_before))
                    log(INFO, "fedattack: report %s", self.store.dir / "report.html")

    # -- what to audit ------------------------------------------------------------
    def audits_round(self, rnd: int) -> bool:
        every = self.plan.options.every
        return bool(self.plan.attacks) and every > 0 and (rnd - 1) % every == 0

    def attacks_for(self, scope: str) -> list[str]:
        return [a for a in self.plan.attacks if ATTACKS.get(a).scope in (scope, "any")]

    def scope_note(self, scope: str) -> str:
        """What a run that sees only sums of updates leaves out, said once before its first round
        ("" where every configured attack runs): the attacks that need one client's update are
        never given one, and where none is left, which attack could attack the sum."""
        if scope != "aggregate" or not self.plan.attacks:
            return ""
        running = self.attacks_for("aggregate")
        idle = [a for a in self.plan.attacks if a not in running]
        if not idle:
            return ""
        key = "attacks" if isinstance(self.plan.record, AppRecord) else "audit.attacks"
        return secagg_scope(idle, running, key=key)

    def params_for(self, attack: str, observation: Observation) -> Any:
        """The parameters attack `attack` runs with on `observation`: the configured ones, or
        (audit.calibrate, with data of the server's own) the ones calibration chose for this
        model, protocol and defense (fedattack.attacks.calibrate), tuned once per setting and
        reused. Calibration runs here, before the setting's first jobs are queued."""
        params = self.plan.attacks[attack]
        opts = self.plan.options
        if not opts.calibrate or self.plan.calibration_data is None or not ATTACKS.get(attack).tunable:
            return params
        key = calibration_key(attack, observation, adaptive=False)
        with self._calibration_lock:
            if key not in self._calibrations:
                self._calibrations[key] = self._calibrate(attack, params, observation)
            return self._calibrations[key]

    def _calibrate(self, attack: str, params: Any, observation: Observation) -> Any:
        opts = self.plan.options
        images, labels = self.plan.calibration_data
        record: dict[str, Any] = {"attack": attack, "protocol": asdict(observation.protocol),
                                  "data": f"{calibration_source(self.plan.record)}, {len(images)} images"}
        say = self.on_calibration
        tried = iter(range(1, opts.calibration_budget + 1))

        def on_trial(values: dict, psnr: float) -> None:
            key, value = next(iter(values.items())) if len(values) == 1 else (None, None)
            if key in STRETCHED:  # a budget, after the tuning
                say(f"calibrating {attack}: {value} {key}: {psnr:.1f} dB")
            elif key in SWITCHES:  # an on/off setting tried flipped, after the tuning
                say(f"calibrating {attack}: {key}={value}: {psnr:.1f} dB")
            else:
                which = " (the configured values)" if not values else ""
                say(f"calibrating {attack}: setting {next(tried, '?')} of {opts.calibration_budget}{which}: "
                    f"{psnr:.1f} dB")

        try:
            cases, held_out = judges(observation, images, labels, cases=opts.calibration_cases,
                                     min_images=opts.calibration_images, seed=self.plan.seed)
            say(f"calibrating {attack} before its first jobs: up to {counted(opts.calibration_budget, 'setting')} on "
                f"{counted(len(cases.cases), 'simulated update')} of this protocol, for clients of "
                f"{band_words(observation.protocol.num_examples)} (once per model, protocol, defense and band of "
                f"client sizes){unsimulated(cases.unmodelled)}")
            ctx = AttackContext(seed=self.plan.seed, labels=opts.labels)
            cal = calibrate(attack, params, cases, budget=opts.calibration_budget, ctx=ctx, held_out=held_out,
                            on_trial=on_trial, check=shutdown.check,
                            iteration_factor=opts.calibration_iteration_factor,
                            restart_factor=opts.calibration_restart_factor, job_seconds=opts.job_timeout)
        except Exception as exc:  # noqa: BLE001 - a calibration that fails leaves the configured parameters
            # (a stop request is a KeyboardInterrupt, and passes)
            record["skipped"] = str(exc) if isinstance(exc, AttackFailure) else f"{type(exc).__name__}: {exc}"
            say(f"calibration of {attack} skipped ({record['skipped']}); it runs with its configured parameters",
                WARNING)
            self._record_calibration(record)
            return params
        record.update(cal.record())
        chosen = describe_calibration(cal.tuned, cal.held_out)
        say(f"calibrated {attack} on {counted(cal.cases, 'simulated update')} in {cal.seconds:.0f} s: "
            f"{chosen} (PSNR {cal.default_psnr:.1f} -> {cal.best_psnr:.1f} dB)")
        self._record_calibration(record)
        return cal.params

    def _record_calibration(self, record: dict) -> None:
        """calibration.json in the run directory: every calibration of the run so far."""
        self.calibrations.append(record)
        store = self.open_store()
        if store is not None:
            (store.dir / "calibration.json").write_text(json.dumps(self.calibrations, indent=2, default=str))

    def variants(self, name: str) -> list[bool]:
        """adaptive flags to run attack `name` with, per audit.adaptive."""
        mode = self.plan.options.adaptive
        if mode == "off" or not ATTACKS.get(name).adaptive or not self.modelled_defenses():
            return [False]  # with no defense to model, the adaptive attack is the plain one
        return [True] if mode == "on" else [False, True]

    def modelled_defenses(self) -> list[str]:
        """The defenses in force that an adaptive attack models (those with a differentiable
        model, `adapt`; see fedattack.defenses.base)."""
        return [d.name for d in self.plan.protocol.settings()
                if (spec := DEFENSES.find(d.name)) is not None and spec.adapt is not None]

    def adaptive_note(self, scope: str = "client") -> str:
        """Said once before the first round where audit.adaptive asks for adaptive attacks and
        no defense in force has a model for them to apply ("" otherwise); of the attacks that
        run in `scope` (under SecAgg+ the client-only ones never run, which scope_note says)."""
        mode = self.plan.options.adaptive
        asked = [a for a in self.attacks_for(scope) if ATTACKS.get(a).adaptive]
        if mode == "off" or not asked or self.modelled_defenses():
            return ""
        key = "adaptive" if isinstance(self.plan.record, AppRecord) else "audit.adaptive"
        models = ", ".join(n for n in DEFENSES.names() if DEFENSES.get(n).adapt is not None)
        return (f"{key}={mode}: no defense in force has a model an adaptive attack could apply (those that do: "
                f"{models}), so {', '.join(asked)} {plural(len(asked), 'runs', 'run')} once, as the plain attack.")

    def calibration_note(self) -> str:
        """Said once before the first round where calibration settings are given but calibration
        is off ("" otherwise): they would change nothing."""
        opts, default = self.plan.options, AuditConfig()
        if opts.calibrate:
            return ""
        app = isinstance(self.plan.record, AppRecord)
        given = [f.name if app else f"audit.{f.name}" for f in fields(AuditConfig)
                 if f.name.startswith("calibration_") and getattr(opts, f.name) != getattr(default, f.name)]
        if not given:
            return ""
        key = "calibrate" if app else "audit.calibrate"
        return (f"{', '.join(given)} {plural(len(given), 'is', 'are')} set but {key} is off: no attack is "
                f"calibrated ({key}={'True' if app else 'true'} turns calibration on).")

    # -- rounds -------------------------------------------------------------------
    def begin_round(self, rnd: int, scope: str = "client") -> RoundStats:
        with self._lock:
            stats = self.rounds[rnd] = RoundStats(rnd, time.perf_counter(), scope=scope)
            return stats

    def round_stats(self, rnd: int) -> RoundStats:
        with self._lock:
            return self.rounds.setdefault(rnd, RoundStats(rnd, time.perf_counter()))

    def record_epsilon(self, rnd: int, epsilon: float) -> None:
        """A privacy loss the server's own accountant reports for round `rnd` (central DP)."""
        with self._lock:
            self.round_stats(rnd).epsilon = float(epsilon)

    def record_failures(self, rnd: int, count: int) -> None:
        """Clients of round `rnd` that failed outside the replies (SecAgg+'s dropped clients)."""
        with self._lock:
            self.round_stats(rnd).errors += int(count)

    def end_round(self, rnd: int, *, test_loss: float = float("nan"), test_acc: float = float("nan")) -> RoundResult:
        """Round `rnd` as rounds.csv records it: the counts so far and the test metrics."""
        with self._lock:
            row = self.round_stats(rnd).result(test_loss=test_loss, test_acc=test_acc, now=time.perf_counter())
            store = self.open_store()
            if store is not None:
                store.add_round(row)
            self.on_round(row, self.completed, self.submitted)
            return row

    # -- observations and jobs -------------------------------------------------------
    def observation(self, sent: dict[str, torch.Tensor], received: dict[str, torch.Tensor], protocol,
                    num_clients: int = 1) -> Observation:
        """What the server holds about one reply: sent weights, update, and the protocol."""
        self.check_arrays(sent)
        self.check_arrays(received)
        glob = {k: sent[k].float() for k in self.param_names}
        update = {k: received[k].float() - glob[k] for k in self.param_names}
        buffers = {k: v for k, v in sent.items() if k not in glob}
        return Observation(model=self.plan.model, data=self.plan.data, global_params=glob, update=update,
                           protocol=protocol, buffers=buffers, returned_buffers=returned(buffers, received),
                           num_clients=num_clients,
                           server_mode=self.plan.server_mode)

    def check_arrays(self, arrays: Mapping[str, Any]) -> None:
        """That `arrays` (tensors, or Flower Arrays) hold every parameter of the audit's model at
        its shape: the attacks replay that model on the exchanged weights."""
        missing = [k for k in self.param_names if k not in arrays]
        if missing:
            have = ", ".join(list(arrays)[:6]) + (" ..." if len(arrays) > 6 else "")
            raise FedattackError(f"model: the exchanged arrays lack the model's parameter '{missing[0]}' "
                                 f"(they hold {have}); give AuditStrategy the model the clients train")
        for name, shape in self.param_shapes.items():
            got = tuple(arrays[name].shape)
            if got != shape:
                raise FedattackError(f"model: the exchanged arrays hold '{name}' of shape {got}, the audit's model has "
                                     f"{shape}; give AuditStrategy the model the clients train")

    def submit(self, rnd: int, client: int | str, obs: Observation, truth: Truth | None, *, scope: str = "client",
               epsilon: float = float("nan"), unscored: str = "") -> int:
        n = 0
        opts = self.plan.options
        for name in self.attacks_for(scope):
            for adaptive in self.variants(name):
                job = AttackJob(round=rnd, client=client, attack=name, params=self.params_for(name, obs),
                                observation=obs, seed=job_seed(self.plan.seed, rnd, client, name),
                                labels=opts.labels, adaptive=adaptive, defense=self.defense,
                                threads=opts.threads_per_job, tf32=opts.tf32, success_ssim=opts.success_ssim,
                                success_margin=opts.success_margin, lpips_weights=opts.lpips_weights,
                                epsilon=epsilon, unscored=unscored if truth is None else "",
                                timeout=opts.job_timeout)
                with self._queue_lock:
                    self._queued.append((job, truth))
                n += 1
        self.submitted += n
        self._wake.set()  # handed to the dispatcher by the background thread, off the round's path
        return n

    def audit_update(self, rnd: int, client: int, obs: Observation, truth: Truth | None, *,
                     train_loss: float = float("nan"), epsilon: float = float("nan")) -> int:
        """One update observed outside Flower (`fedattack attack`): counted as round `rnd`'s reply,
        with the client's DP epsilon where it reports one."""
        with self._lock:
            stats = self.round_stats(rnd)
            stats.replies += 1
            stats.train_loss = train_loss
            stats.audited_clients += 1
            if epsilon == epsilon:
                stats.epsilon = float(epsilon)
            n = self.submit(rnd, client, obs, truth, epsilon=epsilon)
            stats.jobs += n
            return n

    def truth(self, record: ClientRecord | None) -> tuple[Truth | None, str]:
        """The Truth a reply's record gives for scoring, or None and why there is none."""
        if record is None:
            return None, NO_RECORD
        if record.images is None:
            return None, f"client {record.client}: {record.note or 'no samples recorded'}"
        shape = tuple(record.images.shape[1:])
        if shape != tuple(self.plan.data.shape):
            return None, (f"client {record.client} trained on inputs of shape {shape}, the audit's input_shape is "
                          f"{tuple(self.plan.data.shape)}; not scored")
        return Truth(images=torch.from_numpy(np.ascontiguousarray(record.images)).float(),
                     labels=torch.from_numpy(np.asarray(record.labels)).long(),
                     indices=tuple(int(i) for i in record.indices) if record.indices is not None
                     else (-1,) * len(record.labels)), ""  # -1: the sample's dataset index is unknown

    def observe(self, rnd: int, sent: Mapping[int, Message], replies: list[Message], *, arrays_key: str,
                config_key: str, weight_key: str, aggregate: bool = False
                ) -> list[tuple[Message, ClientRecord | None]]:
        """Audit one round's train replies (their audit-only records removed first): one job
        per sampled client and attack, or with `aggregate` (SecAgg: every reply carries the same
        sum) one per attack on the aggregate. Returns the replies with what their records said."""
        with self._lock:
            stats = self.round_stats(rnd)
            replies = in_sent_order(replies, sent)  # the loss's mean and the sum's truth in one order
            good = [r for r in replies if not r.has_error()]
            failed = [r for r in replies if r.has_error()]
            stats.replies, stats.errors = len(good), stats.errors + len(failed)
            if failed and not stats.error:
                stats.error = client_error(failed[0])
            records = [(r, pop_record(r.content)) for r in good]
            metrics = [_metrics(r) for r, _ in records]
            losses = [(float(m.get("train_loss", np.nan)), float(m.get(weight_key, 1))) for m in metrics if m]
            if losses:
                v, w = np.array(losses).T
                stats.train_loss = float(np.average(v, weights=w)) if w.sum() > 0 else float(np.mean(v))
            eps = [float(m["epsilon"]) for m in metrics if "epsilon" in m]
            if eps:  # DP: the largest privacy loss among this round's clients
                stats.epsilon = max(eps)
            if records:
                self.open_store()
            if not self.audits_round(rnd) or not records:
                return records
            if aggregate:
                self._observe_aggregate(rnd, stats, sent, records, arrays_key, config_key, weight_key)
                return records
            chosen = sorted(records, key=lambda ra: (ra[1] is None, ra[1].client if ra[1] else ra[0].metadata.src_node_id))
            if self.plan.options.max_clients:
                chosen = chosen[: self.plan.options.max_clients]
            for reply, record in chosen:
                message = sent.get(reply.metadata.src_node_id)
                if message is None:
                    continue
                m = _metrics(reply)
                config = _config(message, config_key)
                protocol = self.plan.protocol.protocol(config, int(m.get(weight_key, 0)))
                self._check_steps(protocol, config, m, weight_key, record)
                obs = self.observation(message.content[arrays_key].to_torch_state_dict(),
                                       reply.content[arrays_key].to_torch_state_dict(), protocol)
                truth, why = self.truth(record)
                self._warn_once(why)
                client = record.client if record is not None else int(reply.metadata.src_node_id)
                stats.jobs += self.submit(rnd, client, obs, truth, epsilon=float(m.get("epsilon", float("nan"))),
                                          unscored=why)
                stats.audited_clients += 1
            return records

    def _observe_aggregate(self, rnd, stats, sent, records, arrays_key, config_key, weight_key) -> None:
        stats.scope = "aggregate"
        if not self.attacks_for("aggregate"):
            return  # nothing attacks the sum: no client was audited
        stats.audited_clients = len(records)
        first = records[0][0]
        message = sent.get(first.metadata.src_node_id) or next(iter(sent.values()))
        total = int(sum(_metrics(r).get(weight_key, 0) for r, _ in records))
        protocol = self.plan.protocol.protocol(_config(message, config_key), total)
        # the protocol's step count is one client's; the steps of the sum are not one replay
        per_client = [self.plan.protocol.protocol(_config(message, config_key), int(_metrics(r).get(weight_key, 0)))
                      for r, _ in records]
        protocol = replace(protocol, local_steps=max(p.local_steps for p in per_client))
        obs = self.observation(message.content[arrays_key].to_torch_state_dict(),
                               first.content[arrays_key].to_torch_state_dict(), protocol, num_clients=len(records))
        parts = [self.truth(rec) for _, rec in records]
        why = next((w for t, w in parts if t is None), "")
        truth = None if why else aggregate_truth([t for t, _ in parts], [rec.client for _, rec in records])
        self._warn_once(why)
        stats.jobs += self.submit(rnd, "aggregate", obs, truth, scope="aggregate", unscored=why)

    def _warn_once(self, why: str, key: str | None = None) -> None:
        """Log `why` once per run (once per `key` where given: messages that differ in their numbers)."""
        if why and (key or why) not in self._warned:
            self._warned.add(key or why)
            log(WARNING, "fedattack: %s", why)

    def _check_steps(self, protocol: Protocol, config: Mapping[str, Any] | None, metrics: Mapping[str, Any],
                     weight_key: str, record: ClientRecord | None) -> None:
        """Warn where the replayed protocol cannot be what the client did: an epoch's steps
        counted from a reply without its example count, or a train function that drew another
        number of batches (`audit_mod` counts them) than the protocol's steps."""
        if weight_key not in metrics and self.plan.protocol.values(config)["local_steps"] is None:
            self._warn_once(f"the train replies carry no '{weight_key}' (the strategy's weighted_by_key), from which "
                            "the audit counts an epoch's steps: it replays 1 step per epoch", key="no-examples")
        if record is not None and record.batches and record.batches != protocol.local_steps:
            epochs = self.plan.protocol.values(config)["local_steps"] is None
            how = (f" ({counted(protocol.local_epochs, 'epoch')} of batch {protocol.batch_size} over "
                   f"{protocol.num_examples} examples)" if epochs else "")
            self._warn_once(f"client {record.client}'s train function drew {record.batches} batches where the audit "
                            f"replays {counted(protocol.local_steps, 'local step')}{how}: the attacks replay a "
                            "protocol the client did not follow; make the TrainingProtocol say what the train "
                            "function does", key="steps-mismatch")

    # -- results ------------------------------------------------------------------------
    def _deliver(self, res: JobResult) -> None:
        self.completed += 1
        store = self.open_store()
        if store is not None:
            store.add_result(res)
        if store is not None and res.ok and (res.recon_pixels is not None or res.recon_labels is not None):
            out = store.dir / "reconstructions"
            out.mkdir(exist_ok=True)
            arrays = {k: v for k, v in (("images", res.recon_pixels), ("labels", res.recon_labels),
                                        ("matched", res.recon_matched), ("features", res.recon_features))
                      if v is not None}
            np.savez(out / f"{res.row_id}.npz", **arrays)
        self.on_result(res)

    def poll(self) -> None:
        """Hand queued jobs to the dispatcher; deliver the results that are in."""
        with self._dispatch_lock:
            with self._queue_lock:
                queued, self._queued = self._queued, []
            for job, truth in queued:
                self.dispatcher.submit(job, truth)
            if self._dispatcher is None:
                return
            for res in self._dispatcher.poll():
                self._deliver(res)

    def start_polling(self, interval: float = 0.5) -> None:
        """Submit jobs and collect results in the background while training blocks on the grid:
        a round's own audit work is building its observations (Ray's serialization and task
        submission happen here, in this thread)."""

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                try:
                    self.poll()
                except BaseException as exc:  # noqa: BLE001 - handed to finish(), in the caller's thread
                    self._poll_error = exc
                    return

        self._poller = threading.Thread(target=loop, name="fedattack-audit-poller", daemon=True)
        self._poller.start()

    def outstanding(self) -> int:
        """Jobs submitted and not yet delivered (those not yet handed to the dispatcher count too)."""
        with self._dispatch_lock, self._queue_lock:
            return len(self._queued) + (self._dispatcher.pending() if self._dispatcher is not None else 0)

    def finish_jobs(self) -> None:
        """Say how many jobs are outstanding (`on_waiting`), then collect them all (`finish`)."""
        pending = self.outstanding()
        if pending and shutdown.requested() is None:  # after a stop, the rest is cancelled: no wait
            self.on_waiting(pending)
        self.finish()

    def finish(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._poller is not None:
            self._poller.join()
        if self._poll_error is not None:
            raise self._poll_error
        with self._dispatch_lock:
            self.poll()  # jobs still queued
            if self._dispatcher is not None:
                with self._still_waiting(self._dispatcher):
                    for res in self._dispatcher.drain():
                        self._deliver(res)

    @contextmanager
    def _still_waiting(self, dispatcher: Any) -> Iterator[None]:
        """While the last jobs are collected, a line every `heartbeat` seconds: an app's log is
        otherwise silent until a job ends, a minute or more for one attack on a big update."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat):
                if n := dispatcher.pending():
                    log(INFO, "fedattack: still waiting for %s (%d done) ...", counted(n, "attack job"), self.completed)

        thread = threading.Thread(target=beat, name="fedattack-heartbeat", daemon=True) if self.heartbeat > 0 else None
        if thread is not None:
            thread.start()
        try:
            yield
        finally:
            done.set()
            if thread is not None:
                thread.join()


def aggregate_truth(parts: Sequence[Truth], clients: Sequence[int | str]) -> Truth:
    """The ground truth of a sum of updates: every part's images in reply order, each with the
    dataset index its client recorded (-1 where unknown) and that client (`clients`, one per
    part), so that an image recovered from the sum is credited to the sample, and the client,
    it came from."""
    return Truth(images=torch.cat([t.images for t in parts]), labels=torch.cat([t.labels for t in parts]),
                 indices=tuple(i for t in parts for i in t.indices),
                 owners=tuple(c for t, c in zip(parts, clients) for _ in range(len(t.labels))))


def client_error(reply: Message) -> str:
    """A failed reply's reason in one line (a data error says which file and why): the message
    of the exception Flower's simulation wrapped ("...occurred. Message: <it>'>"), else the
    last line of the reason the client sent (a traceback's names the exception)."""
    text = str(reply.error.reason or "")
    wrapped = re.search(r"occurred\. Message: (.*?)'>\s*$", text, re.S)
    lines = [line.strip() for line in (wrapped.group(1) if wrapped else text).splitlines() if line.strip()]
    reason = (lines[0] if wrapped else lines[-1]) if lines else f"error code {reply.error.code}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _metrics(msg: Message) -> dict:
    records = msg.content.metric_records
    return dict(next(iter(records.values()))) if records else {}


def _config(msg: Message, key: str) -> dict:
    return dict(msg.content[key]) if key in msg.content.config_records else {}


def _first(metrics: Mapping[str, Any] | None, keys: Sequence[str]) -> float:
    for k in keys:
        if metrics and k in metrics and isinstance(metrics[k], (int, float)):
            return float(metrics[k])
    return float("nan")


def log_result(r: JobResult) -> None:
    """Default sink of job results: one line in Flower's log."""
    who = "aggregate" if r.scope == "aggregate" else f"client {r.client}"
    if not r.ok:
        log(WARNING, "fedattack: round %s, %s, %s: %s: %s", r.round, who, r.label, r.status, r.error)
    elif not r.scored:
        log(INFO, "fedattack: round %s, %s, %s: reconstructed (unscored), labels %s", r.round, who, r.label,
            r.labels_text)
    else:
        s = r.score
        labels = "" if s.label_acc != s.label_acc else f", labels {100 * s.label_acc:.0f}%"  # NaN: none recovered
        log(INFO, "fedattack: round %s, %s, %s: PSNR %.1f dB, SSIM %.3f%s, %d/%d recovered%s",
            r.round, who, r.label, s.psnr, s.ssim, labels, s.recovered, s.num_images, " (LEAK)" if r.success else "")


def log_round(row: RoundResult, done: int, submitted: int) -> None:
    log(INFO, "fedattack: round %s: %d replies (%d errors), %d clients audited, %d/%d attack jobs done",
        row.round, row.replies, row.errors, row.audited_clients, done, submitted)


# -- the public wrapper ---------------------------------------------------------------------------

class AuditStrategy(Strategy):
    """Audit every client update a Flower strategy receives with gradient-inversion attacks.

    Wraps your own Message-API strategy (`flwr.serverapp.strategy`) without changing it:
    messages, sampling (seeded, with `seed`), aggregation and results are the wrapped
    strategy's. Before the wrapped strategy aggregates a round, every sampled client's update
    (returned minus sent arrays) goes to the attacks, with what the server knows: the model,
    the protocol it configured, the data's shape and normalization. Attacks run beside training
    (Ray tasks when Ray is running, else a local thread pool); `start` returns after the last
    round's attacks and writes the run directory: `leakage.csv`, `rounds.csv`, `summary.json`,
    `report.html`, `images/`, `reconstructions/`.

    Scoring needs the clients' ground truth, which only a simulation has: `audit_mod` and
    `AuditedLoader` in the ClientApp send it in an audit-only record that this wrapper removes
    before anything else sees the reply. Without it the attacks still run and the run
    directory holds their reconstructions and recovered labels, unscored, and says why.

    Parameters
    ----------
    strategy : Strategy
        Your strategy (a `flwr.serverapp.strategy.Strategy`; a legacy `flwr.server.strategy`
        one is refused). Its `arrayrecord_key`, `configrecord_key` and `weighted_by_key` are
        honoured (defaults "arrays", "config", "num-examples").
    model : Union[torch.nn.Module, Callable[[], torch.nn.Module], ModelSpec]
        The model the clients train: a module (kept as a template, deep-copied for every
        attack) or a factory. Attack jobs receive it by pickle (cloudpickle), so its class or
        factory must be importable where they run.
    protocol : TrainingProtocol
        The local training the server configured: learning rate, epochs or steps, batch size,
        momentum, optimizer, weight decay, or the train-config keys to read them from.
    attacks : Union[Sequence[str], Mapping[str, Optional[Mapping]]] (default: ("idlg", "invgrad"))
        Attacks by registered name or `module:attr` import path, or a mapping from name to
        parameters (e.g. `{"invgrad": {"iterations": 200}}`).
    out_dir : Optional[str] (default: None)
        The run directory; `runs/<timestamp>` if None. It must not exist or be empty.
    input_shape : Optional[tuple[int, int, int]] (default: None)
        (channels, height, width) of the model's inputs; read off the model if None.
    num_classes : Optional[int] (default: None)
        Classes; the output size of the model's last Linear layer if None.
    mean, std : Optional[Sequence[float]] (default: None)
        The normalization the clients apply to pixels in [0, 1] (`Normalize(mean, std)`), given
        together; neither means inputs are pixels in [0, 1]. Reconstructions are scored and
        saved as pixels.
    seed : Optional[int] (default: None)
        Fixes which clients are sampled every round (nodes identify themselves through
        `audit_mod`) and every attack's initialization. None: Flower's own sampling.
    every : int (default: 1)
        Audit every `every`-th round (1: all rounds; 0: none, the rounds run unaudited).
    max_clients : int (default: 0)
        Attack at most this many of a round's clients (0: all).
    labels : str (default: "auto")
        Label-recovery method for attacks that need labels first.
    adaptive : str (default: "off")
        "on" or "both": also run the defense-aware variants of attacks that model the
        protocol's defenses.
    success_ssim : float (default: 0.5)
        SSIM from which a reconstructed image counts as recovered.
    success_margin : float (default: 0.5)
        dB by which an update's mean PSNR must beat the flat-image baseline's before any of its
        images counts as recovered.
    max_concurrent : int (default: 2)
        Attack jobs running at once.
    gpus_per_job : float (default: 0.0)
        GPUs each attack job asks Ray for.
    threads_per_job : int (default: 1)
        Torch threads of each attack job.
    tf32 : bool (default: False)
        Let attack jobs on a GPU use TF32.
    save_images : bool (default: True)
        Write image galleries to `images/`.
    job_timeout : float (default: 1800.0)
        Seconds an attack job may run before it is stopped and recorded as failed (0: no limit).
    calibrate : bool (default: False)
        Tune each attack's hyperparameters before its first jobs in each setting (model,
        protocol, defense), on client updates the server simulates on `calibration_data`
        (fedattack.attacks.calibrate); the choice is logged and kept in calibration.json.
    calibration_data : Optional[tuple[Tensor, Tensor]] (default: None)
        The server's own images (N, C, H, W, as model inputs) and labels, for calibration.
    calibration_budget : int (default: 12)
        Candidate settings calibration tries, the configured parameters first; each costs
        `calibration_cases` attack runs.
    calibration_cases : int (default: 2)
        Simulated client updates calibration scores each candidate on; as many fresh ones
        confirm the winner against the configured parameters before it is used.
    calibration_images : int (default: 8)
        Images each of those two sets holds at least: clients of fewer images are simulated
        more than `calibration_cases` times (one image's PSNR says little about the next's).
    calibration_iteration_factor : int (default: 4)
        After tuning, calibration doubles an attack's iterations while the longer run leaks
        more on the simulated updates, up to this factor and within half of `job_timeout`
        (1: keep the configured count).
    calibration_restart_factor : int (default: 4)
        Then it doubles the attack's restarts likewise, up to this factor (1: keep them).
    server_mode : str (default: "honest")
        "malicious" when the model carries a malicious server's extension blocks (fedattack's
        own models): they are re-sent every round and the report says so.
    on_result, on_round : Optional[Callable] (default: None)
        Called with each JobResult, and with each RoundResult and the job counts; None logs
        them through Flower's logger.
    record : Optional[Any] (default: None)
        What the run directory's config.yaml records; None: these arguments (`fedattack run`
        passes its whole config).
    dispatcher : Optional[Dispatcher] (default: None)
        Where attack jobs run; None: Ray tasks when this process is connected to Ray at the
        first job, else a local thread pool.
    """

    def __init__(self, strategy: Strategy, *, model: Any, protocol: TrainingProtocol,
                 attacks: Sequence[str] | Mapping[str, Any] = ("idlg", "invgrad"), out_dir: str | Path | None = None,
                 input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int | None = None,
                 every: int = 1, max_clients: int = 0, labels: str = "auto", adaptive: str = "off",
                 success_ssim: float = 0.5, success_margin: float = 0.5, max_concurrent: int = 2,
                 gpus_per_job: float = 0.0,
                 threads_per_job: int = 1, tf32: bool = False, save_images: bool = True, job_timeout: float = 1800.0,
                 server_mode: str = "honest", on_result: Callable[[JobResult], None] | None = None,
                 on_round: Callable[[RoundResult, int, int], None] | None = None,
                 record: Any = None, dispatcher: Dispatcher | None = None, calibrate: bool = False,
                 calibration_data: tuple[Any, Any] | None = None, calibration_budget: int = 12,
                 calibration_cases: int = 2, calibration_images: int = 8,
                 calibration_iteration_factor: int = 4, calibration_restart_factor: int = 4) -> None:
        problem = strategy_problem(strategy)
        if problem:
            raise ConfigError("strategy", f"{type(strategy).__name__} {problem}")
        if not isinstance(strategy, Strategy):  # a class or a factory: the registry of fl.strategy takes those
            raise ConfigError("strategy", f"got {describe(strategy)}; pass the strategy itself, e.g. FedAvg()")
        if isinstance(strategy, AuditStrategy):
            raise ConfigError("strategy", "is already an AuditStrategy; wrap your strategy once")
        if not isinstance(protocol, TrainingProtocol):
            raise ConfigError("protocol", "expected a fedattack.TrainingProtocol, e.g. "
                                          "TrainingProtocol(lr=0.01, local_epochs=1, batch_size=32)")
        if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
            raise ConfigError("out_dir", f"expected a path (str or pathlib.Path), got {describe(out_dir)}")
        # absolute: the ServerApp runs where its SuperLink was started, not where `flwr run` was
        out = (Path(out_dir) if out_dir else Path(default_out_dir())).absolute()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError("out_dir", f"{out} exists and is not empty; choose a new directory")
        try:
            check_writable(out, "out_dir")
        except FedattackError as exc:
            raise ConfigError("out_dir", str(exc).removeprefix("out_dir: ")) from None
        for name, fn in (("on_result", on_result), ("on_round", on_round)):
            if fn is not None and not callable(fn):
                raise ConfigError(name, f"expected a function or None, got {describe(fn)}")
        if dispatcher is not None and not all(callable(getattr(dispatcher, m, None))
                                              for m in ("submit", "poll", "drain", "pending")):
            raise ConfigError("dispatcher", f"expected a fedattack Dispatcher or None, got {describe(dispatcher)}")
        spec = model if isinstance(model, ModelSpec) else user_model_spec(model, in_shape=input_shape,
                                                                             num_classes=num_classes)
        data = _data_spec(spec, mean, std)
        if server_mode not in ("honest", "malicious"):
            raise ConfigError("server_mode", f"unknown value '{server_mode}'; allowed: honest, malicious")
        audit_cfg, attack_params = _audit_section(attacks, seed=seed or 0, server_mode=server_mode, every=every,
                                                  max_clients=max_clients, labels=labels, adaptive=adaptive,
                                                  success_ssim=success_ssim, success_margin=success_margin,
                                                  max_concurrent=max_concurrent, gpus_per_job=gpus_per_job,
                                                  threads_per_job=threads_per_job, tf32=tf32,
                                                  save_images=save_images, job_timeout=job_timeout,
                                                  calibrate=calibrate, calibration_budget=calibration_budget,
                                                  calibration_cases=calibration_cases,
                                                  calibration_images=calibration_images,
                                                  calibration_iteration_factor=calibration_iteration_factor,
                                                  calibration_restart_factor=calibration_restart_factor)
        if record is None:
            record = AppRecord(_app_record(strategy, spec, data, protocol, audit_cfg, attack_params, seed,
                                           server_mode), audit_cfg)
        plan = AuditPlan(model=spec, data=data, protocol=protocol, attacks=attack_params, options=audit_cfg,
                         seed=seed or 0, server_mode=server_mode, record=record,
                         calibration_data=_calibration_data(calibrate, calibration_data, data))
        self.strategy = strategy
        self.auditor = Auditor(plan, out_dir=out, dispatcher=dispatcher, on_result=on_result, on_round=on_round)
        self.sampling = SeededSampling(seed)
        self.arrays_key = str(_setting(strategy, "arrayrecord_key", "arrays"))
        self.config_key = str(_setting(strategy, "configrecord_key", "config"))
        self.weight_key = str(_setting(strategy, "weighted_by_key", "num-examples"))
        self.aggregate_only = False  # SecAgg: every reply carries the same aggregate (set by the SecAgg bridge)
        self._sent: dict[int, Message] = {}
        self._sent_evaluate: dict[int, Message] = {}
        self._client_eval: dict[int, MetricRecord] = {}
        self._timeout = 3600.0

    def __getattr__(self, name: str) -> Any:  # expose the wrapped strategy's attributes
        if name in ("strategy", "auditor") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def out_dir(self) -> Path:
        return self.auditor.out_dir

    # -- the run ----------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Run the wrapped strategy's rounds (Flower's `Strategy.start`), audited; return its Result
        once the last attack job has finished and the run directory is written."""
        with self.session(grid, timeout=timeout):
            return Strategy.start(self, grid, initial_arrays, num_rounds=num_rounds, timeout=timeout,
                                  train_config=train_config, evaluate_config=evaluate_config,
                                  evaluate_fn=self.evaluate_fn(evaluate_fn))

    @contextmanager
    def session(self, grid: Grid, *, timeout: float = 3600) -> Iterator["AuditStrategy"]:
        """The audited run around any workflow that drives this strategy (see server/secagg.py)."""
        self._timeout = timeout
        with self.auditor.session(scope="aggregate" if self.aggregate_only else "client"):
            self.sampling.identify(grid, min_nodes=int(_setting(self.strategy, "min_available_nodes", 1) or 1),
                                   timeout=timeout)
            yield self

    def evaluate_fn(self, user_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None
                    ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """`user_fn`, then the round's row in rounds.csv (test metrics from its result, else from
        the clients' aggregated evaluation)."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            res = user_fn(server_round, arrays) if user_fn is not None else None
            if server_round > 0:
                metrics = dict(res) if res is not None else {}
                clients = dict(self._client_eval.get(server_round) or {})
                acc, loss = _first(metrics, ACC_KEYS), _first(metrics, LOSS_KEYS)
                if acc != acc and loss != loss:
                    acc, loss = _first(clients, ACC_KEYS), _first(clients, LOSS_KEYS)
                self.auditor.end_round(server_round, test_loss=loss, test_acc=acc)
            return res

        return evaluate

    # -- Strategy -----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.auditor.begin_round(server_round, scope="aggregate" if self.aggregate_only else "client")
        if self.auditor.malicious_state:
            arrays = ArrayRecord({**arrays.to_torch_state_dict(), **self.auditor.malicious_state})
        if self.auditor.audits_round(server_round):  # a model that is not the clients' stops before they train
            self.auditor.check_arrays(arrays)
        with self.sampling.seeded(grid, server_round, "train") as view:
            messages = list(self.strategy.configure_train(server_round, arrays, config, view))
        for m in messages:  # a round that could not be replayed stops here, before any client trains
            self.auditor.plan.protocol.check(_config(m, self.config_key))
        self._sent = {m.metadata.dst_node_id: m for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for r in replies:
            if not r.has_error() and self.arrays_key not in r.content.array_records:
                have = ", ".join(sorted(k for k in r.content.array_records if k not in AUDIT_RECORDS)) or "none"
                raise FedattackError(f"arrayrecord_key: a train reply (node {r.metadata.src_node_id}) has no "
                                     f"ArrayRecord '{self.arrays_key}' (its ArrayRecords: {have}); reply under "
                                     f"the strategy's arrayrecord_key")
        records = self.auditor.observe(server_round, self._sent, replies, arrays_key=self.arrays_key,
                                       config_key=self.config_key, weight_key=self.weight_key,
                                       aggregate=self.aggregate_only)
        for reply, record in records:
            if record is not None:
                self.sampling.learn(reply.metadata.src_node_id, record.client)
        arrays, metrics = self.strategy.aggregate_train(server_round, in_sent_order(replies, self._sent))
        if metrics is not None and "flowerdp_epsilon" in metrics:  # central DP: the server's accountant
            self.auditor.record_epsilon(server_round, float(metrics["flowerdp_epsilon"]))
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        with self.sampling.seeded(grid, server_round, "evaluate") as view:
            messages = list(self.strategy.configure_evaluate(server_round, arrays, config, view))
        self._sent_evaluate = {m.metadata.dst_node_id: m for m in messages}
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round, in_sent_order(replies, self._sent_evaluate))
        if metrics is not None:
            self._client_eval[server_round] = metrics
        return metrics

    def summary(self) -> None:
        self.strategy.summary()
        attacks = ", ".join(self.auditor.attacks_for("aggregate" if self.aggregate_only else "client")) or "none"
        log(INFO, "\t└──> fedattack audit: %s; run directory %s", attacks, self.out_dir)


# -- building the plan from the keyword arguments -------------------------------------------------

def _setting(strategy: Any, name: str, default: Any) -> Any:
    """A strategy's setting, looked up through wrappers (Flower's DP wrappers keep theirs as `.strategy`)."""
    seen = 0
    while strategy is not None and seen < 8:
        if name in getattr(strategy, "__dict__", {}):
            return getattr(strategy, name)
        strategy, seen = getattr(strategy, "strategy", None), seen + 1
    return default


def _data_spec(spec: ModelSpec, mean: Sequence[float] | None, std: Sequence[float] | None) -> DataSpec:
    c = spec.in_shape[0]

    def channels(name: str, values: Sequence[float] | None, default: float) -> tuple[float, ...]:
        if values is None:
            return (default,) * c
        wrong = ConfigError(name, f"expected numbers (one per input channel, or one for all), got {values!r}")
        if isinstance(values, str):
            raise wrong
        try:
            vals = tuple(float(v) for v in (values if isinstance(values, Sequence) else [values]))
        except (TypeError, ValueError):
            raise wrong from None
        if not all(math.isfinite(v) for v in vals):
            raise ConfigError(name, f"expected finite numbers, got {values!r}")
        if len(vals) == 1:
            vals = vals * c
        if len(vals) != c:
            raise ConfigError(name, f"expected 1 or {c} values (one per input channel), got {len(vals)}")
        return vals

    m, s = channels("mean", mean, 0.0), channels("std", std, 1.0)
    if any(v <= 0 for v in s):
        raise ConfigError("std", f"must be > 0, got {s}")
    if (mean is None) != (std is None):  # half a normalization is almost always a forgotten argument
        raise ConfigError("std" if std is None else "mean", "give mean and std together (the normalization "
                                                             "the clients apply), or neither for pixels in [0, 1]")
    if mean is None and std is None:
        log(WARNING, "fedattack: no mean/std given: model inputs are taken to be pixels in [0, 1]")
    return DataSpec(shape=tuple(spec.in_shape), num_classes=spec.num_classes, mean=m, std=s)


def _calibration_data(calibrate: bool, given: Any, data: DataSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The server's own (images, labels) for calibration, as model inputs of the model's shape."""
    if not calibrate:
        return None
    if given is None:
        raise ConfigError("calibration_data", "calibrate=True needs the server's own data: (images, labels) "
                                              "as model inputs, e.g. a held-out split no client trains on")
    try:
        images, labels = (torch.as_tensor(v) for v in given)
    except (TypeError, ValueError):
        raise ConfigError("calibration_data", "expected (images, labels): a tensor (N, C, H, W) and one of N labels")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(data.shape) or labels.shape != (len(images),):
        raise ConfigError("calibration_data", f"expected images (N, {', '.join(map(str, data.shape))}) and N labels, "
                                              f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()) or \
            len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= data.num_classes):
        raise ConfigError("calibration_data", f"labels must be class ids 0 to {data.num_classes - 1} (the model's "
                                              f"{data.num_classes} classes), got {labels.min().item()} to "
                                              f"{labels.max().item()}")
    if not len(images):
        raise ConfigError("calibration_data", "holds no images; give the server's own (images, labels)")
    images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise ConfigError("calibration_data", "images hold NaN or infinite values")
    m = torch.tensor(data.mean).view(1, -1, 1, 1)
    s = torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = images * s + m
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -0.05 or hi > 1.05:  # a little slack for resampling's overshoot
        raise ConfigError("calibration_data", f"images are not model inputs of this normalization: as pixels "
                                              f"(x * std + mean) they run from {lo:.3g} to {hi:.3g}, not 0 to 1; "
                                              "give them as the clients' loaders do (after Normalize(mean, std))")
    return images, labels.long()


def generator_fit(attacks: Mapping[str, Any], data: DataSpec) -> list[str]:
    """A generative prior trained on images of another shape still runs (its images averaged
    over channels or repeated, and resized), but is a weaker prior: what to say about it."""
    notes = []
    for name, params in attacks.items():
        path = getattr(params, "generator", None)
        if not path:
            continue
        meta = check_checkpoint(path, f"{name}.generator")
        made = (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"]))
        if made != tuple(data.shape):
            trained = f" on {meta['dataset']}" if meta.get("dataset") else ""
            notes.append(f"{name}'s generator was trained{trained} at {'x'.join(map(str, made))}; this run's images "
                         f"are {'x'.join(map(str, data.shape))}: its images are converted and resized to fit, a weaker "
                         "prior than one trained on images like the clients'")
    return notes


def _audit_section(attacks: Sequence[str] | Mapping[str, Any], *, seed: int, server_mode: str = "honest",
                   **options: Any) -> tuple[AuditConfig, dict[str, Any]]:
    """The audit options and each attack's parameters, validated as fedattack's config is (an
    attack that needs a malicious server against `server_mode` too)."""
    if isinstance(attacks, (str, AttackSpec)):
        attacks = [attacks]
    if not isinstance(attacks, (Mapping, Sequence)):
        raise ConfigError("attacks", f"expected a list of attacks or a mapping from attack to parameters, got "
                                     f"{describe(attacks)}")
    if isinstance(attacks, Mapping):
        attacks = {_attack_name(k): v for k, v in attacks.items()}
    else:
        attacks = [_attack_name(a) for a in attacks]
        twice = first_repeat(attacks)
        if twice is not None:
            raise ConfigError("attacks", f"'{twice}' is listed twice; each attack runs once per update (give its "
                                         f"parameters as attacks={{'{twice}': {{...}}}})")
    given = dict(attacks) if isinstance(attacks, Mapping) else {a: None for a in attacks}
    ready = {k: v for k, v in given.items() if is_dataclass(v)}
    raw: dict[str, Any] = {"seed": seed, "server": {"mode": server_mode}, "audit": {"attacks": list(given), **options}}
    for name, params in given.items():
        if is_dataclass(params):
            raw[name] = asdict(params)  # checked as given (a ggl generator, say), not as the defaults
        elif params is not None:
            if not isinstance(params, Mapping):
                raise ConfigError(f"attacks.{name}", f"expected a mapping of parameters, got {params!r}")
            raw[name] = dict(params)
    needs = needing_malicious_server(given) if server_mode != "malicious" else []
    if needs:  # before the config's own check, which names fedattack's keys, not these arguments
        raise ConfigError("server_mode", f"{needs[0]} needs a malicious server (one that changes the model it "
                                         f'sends); allowed: server_mode="malicious", or attacks without '
                                         f"{', '.join(needs)}")
    try:
        cfg = from_dict(raw)
    except ConfigError as exc:  # named as these arguments are, not as fedattack's config keys
        raise ConfigError(_argument(exc.field, list(given)), exc.message) from None
    return cfg.audit, {name: ready.get(name, cfg.attack_params[name]) for name in given}


def job_seed(seed: int, rnd: int, client: int | str, attack: str) -> int:
    """An attack job's seed, from the run's seed, the round, the client and the attack's name:
    the same whichever other attacks are listed, and in which order (it was the attack's place
    in the list, so adding one changed the others' results), and distinct for every (round,
    client, attack) rather than a sum that two of them can share."""
    key = zlib.crc32(f"{client}/{attack}".encode())
    return int(np.random.SeedSequence([int(seed), int(rnd), key]).generate_state(1)[0] % 2**31)


def in_sent_order(replies: Iterable[Message], sent: Mapping[int, Message]) -> list[Message]:
    """The replies in the order their instructions were sent (which a seeded sampling fixes), not
    the order they arrived in: a strategy sums three or more updates in the order it gets them,
    and float addition depends on it, so arrival order would make one seed's runs differ."""
    position = {node: i for i, node in enumerate(sent)}
    return sorted(replies, key=lambda r: (position.get(r.metadata.src_node_id, len(position)),
                                          r.metadata.src_node_id))


def _attack_name(attack: Any) -> Any:
    """An attack as the audit names it: a registered name, or `module:name` for the object
    `@register_attack` returned in an importable module (the name attack workers import)."""
    if isinstance(attack, str):
        return attack
    if not isinstance(attack, AttackSpec):
        raise ConfigError("attacks", f"got {describe(attack)}; allowed: registered attack names, 'module:attr' "
                                     "paths, or what @fedattack.attacks.register_attack returned")
    module, name = getattr(attack.fn, "__module__", None), getattr(attack.fn, "__name__", "")
    if str(module).startswith("fedattack.") and ATTACKS.find(attack.name) is attack:
        return attack.name  # a built-in one, by its registered name
    if module in (None, "", "__main__"):
        raise ConfigError("attacks", f"the attack object '{attack.name}' is defined in the script being run; "
                                     "give it by name, or define it in an importable module and give it as it is "
                                     "imported (the attack workers import it by its 'module:name')")
    return f"{module}:{name}"


def _argument(key: str, attacks: Sequence[str]) -> str:
    """AuditStrategy's argument for fedattack's config key `key`: `audit.every` is `every`, an
    attack's parameter `invgrad.iters` is `attacks['invgrad'].iters` (as the attack was named)."""
    if key.startswith("audit."):
        return key[len("audit."):]
    for name in attacks:
        for prefix in (name, name.rsplit(":", 1)[-1], name.rsplit(".", 1)[-1]):
            if key.startswith(f"{prefix}."):
                return f"attacks[{name!r}].{key[len(prefix) + 1:]}"
    return key


def _app_record(strategy: Strategy, spec: ModelSpec, data: DataSpec, protocol: TrainingProtocol,
                audit: AuditConfig, attacks: dict[str, Any], seed: int | None, server_mode: str) -> dict:
    return {
        "seed": seed if seed is not None else 0,  # attacks' initialization
        "server": {"mode": server_mode},
        "fl": {"strategy": f"{type(strategy).__module__}:{type(strategy).__qualname__}",
               "sampling": "seeded (seed)" if seed is not None else "the strategy's own (unseeded)"},
        "model": {"name": spec.name, "in_shape": list(spec.in_shape), "num_classes": spec.num_classes},
        "data": {"name": "(the app's own)", "shape": list(data.shape), "num_classes": data.num_classes,
                 "mean": list(data.mean), "std": list(data.std)},
        "protocol": protocol.as_dict(),
        "audit": asdict(audit),
        **{name: asdict(p) for name, p in attacks.items() if is_dataclass(p)},
    }
