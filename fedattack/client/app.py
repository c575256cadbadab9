"""fedattack's Flower ClientApp: one module for every run (plain and SecAgg+, `fedattack run`
and `flwr run .`).

A client runs only its own code. Its configuration comes from its own installation: the
config its ClientApp was built with (`fedattack run` builds it with the user's config), else
its run config (`config`: a YAML path, `overrides`: key=value items), as a Flower app reads
`context.run_config`. Of what the server sends, it uses the arrays and the numeric protocol
values a server may legitimately set: `lr`, `local-steps`, `local-epochs`, `batch-size`,
`momentum` and `<defense>.<parameter>` for numeric parameters of the defenses its own config
lists (not of a defense that changes the model). Every other entry is ignored, strings such as
module paths included: nothing named in a message is imported or called. Server-side plug-ins
(attacks given as `module:attr`, the strategy) are not loaded on clients.

The reply carries the new weights and metrics as any Flower client's would; `audit_mod`
attaches the audit-only record of the samples trained on (fedattack.client.record), which the
server's audit strategy removes before anything else sees the reply. Protocol-level DP
defenses (`flowerdp`, `localdp`) are Flower's own client mods, attached to the train function
only (mods on the whole app would also run on evaluate messages); SecAgg+ runs through
`secaggplus_message_mod` (fedattack.client.secagg).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shlex
from functools import lru_cache, partial
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedattack.client.record import audit_mod, record_samples
from fedattack.client.secagg import is_secagg, secaggplus_message_mod
from fedattack.client.train import client_seed, evaluate, local_train, returned_state
from fedattack.config import DEFAULT_CONFIG, apply_overrides, check_client, check_sections, from_dict, read_yaml
from fedattack.data import ImageData
from fedattack.defenses import DEFENSES
from fedattack.defenses.flower_dp import client_mods, numpy_seed
from fedattack.errors import ConfigError
from fedattack.experiment import Experiment, build
from fedattack.schema import Config

# train-config key -> client config field: the numeric protocol values a server may set
PROTOCOL_KEYS: dict[str, tuple[str, type]] = {
    "lr": ("lr", float), "local-steps": ("local_steps", int), "local-epochs": ("local_epochs", int),
    "batch-size": ("batch_size", int), "momentum": ("momentum", float),
    "proximal-mu": ("proximal_mu", float)}  # the key Flower's FedProx sends
LEGACY_CONFIG_KEY = "fedattack"  # where servers before the plug-in API sent their whole config (ignored)


# -- the client's own configuration -------------------------------------------------------------

def client_view(raw: dict) -> dict:
    """The part of a config a client needs, without the server's plug-ins: attacks given as
    `module:attr` (and their sections) are left out, and a strategy import path is not kept.
    Registered attacks stay listed: in malicious mode they name the model extensions the
    server sends."""
    raw = copy.deepcopy(raw or {})
    audit = raw.get("audit") or {}
    attacks = [a for a in (audit.get("attacks") or []) if isinstance(a, str) and ":" not in a]
    for key in [k for k in raw if isinstance(k, str) and ":" in k and k not in DEFENSES.names()
                and k not in ((raw.get("client") or {}).get("defenses") or [])]:
        del raw[key]
    raw["audit"] = {"attacks": attacks}
    fl = raw.get("fl") or {}
    if ":" in str(fl.get("strategy", "")):
        fl["strategy"] = "fedavg"
        fl.pop("strategy_args", None)
    for section in ("sweep", "victim", "ray"):
        raw.pop(section, None)
    return raw


def _numpy_seed_of(seed: int, rnd: int, context: Context, *, stream: int) -> int:
    """The seed of NumPy's global generator for one of Flower's mods (2: DP noise, 3: SecAgg+'s
    rounding) on this client in round `rnd`."""
    return client_seed(seed, rnd, _partition_id(context), stream=stream)


@lru_cache(maxsize=4)
def client_experiment(view_json: str) -> Experiment:
    """The experiment a client builds from its own config (once per process and config)."""
    return build(from_dict(json.loads(view_json)))


def own_config(context: Context, fixed: str | None) -> str:
    """This client's config as JSON: the one its app was built with, else its run config's; the
    federation's size (`num-partitions`, as the simulation sets it) is the number of clients."""
    if fixed is not None:
        raw = json.loads(fixed)
    else:
        rc = context.run_config
        path = str(rc.get("config") or "") or DEFAULT_CONFIG
        raw = client_view(apply_overrides(read_yaml(path), shlex.split(str(rc.get("overrides", "")))))
    parts = context.node_config.get("num-partitions")
    if isinstance(parts, int) and parts > 0:
        fl = raw.setdefault("fl", {})
        fl["num_clients"] = parts
        fl["clients_per_round"] = min(int(fl.get("clients_per_round", 2)), parts)
    return json.dumps(raw, sort_keys=True, default=str)


def with_protocol(cfg: Config, record: ConfigRecord | None) -> Config:
    """`cfg` with the numeric protocol values of a train config applied; everything else ignored."""
    if record is None:
        return cfg
    if LEGACY_CONFIG_KEY in record:
        _note_once("fedattack client: ignoring the 'fedattack' entry of the train config: a client takes its "
                   "configuration from its own run config")
    cfg = cfg.copy()
    for key, (name, kind) in PROTOCOL_KEYS.items():
        if key in record and _numeric(record[key]):
            setattr(cfg.client, name, _sent(f"client.{name}", record[key], kind))
    for key, value in record.items():
        defense, _, param = str(key).partition(".")
        if not param or defense not in cfg.client.defenses or not _numeric(value):
            continue
        if DEFENSES.get(defense).model_extension:  # would change the model the client builds
            continue
        params = cfg.defense(defense)
        kinds = {f.name: f.type for f in dataclasses.fields(params)}
        if param in kinds and any(t in str(kinds[param]) for t in ("int", "float")):
            setattr(params, param, _sent(f"{defense}.{param}", value, float if "float" in str(kinds[param]) else int))
    try:  # what the client's own config would refuse (ranges, a defense's own checks), refused from the server too
        check_client(cfg)
        check_sections(DEFENSES, {name: cfg.defense(name) for name in cfg.client.defenses})
    except ConfigError as exc:
        raise ConfigError(exc.field, f"the server sent a value this client's config refuses: {exc.message}") from None
    return cfg


def _sent(field: str, value: float, kind: type) -> float | int:
    """A number the server sent for `field`, as `kind`: finite, and whole where `kind` is int."""
    if not math.isfinite(value) or (kind is int and value != int(value)):
        raise ConfigError(field, f"the server sent {value}; expected {'a whole' if kind is int else 'a finite'} number")
    return kind(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_NOTED: set[str] = set()


def _note_once(text: str) -> None:
    if text not in _NOTED:
        _NOTED.add(text)
        log(WARNING, text)


def _partition_id(context: Context) -> int:
    node = context.node_config
    if "partition-id" not in node:
        raise ConfigError("partition-id", "fedattack clients need node_config['partition-id'] (set by the simulation)")
    return int(node["partition-id"])


def _records(msg: Message) -> tuple[str, ArrayRecord, ConfigRecord | None]:
    """The message's arrays (under whatever key the strategy uses) and its train config."""
    if not msg.content.array_records:
        raise ConfigError("arrays", "the train message carries no ArrayRecord")
    key, arrays = next(iter(msg.content.array_records.items()))
    configs = msg.content.config_records
    return key, arrays, next(iter(configs.values())) if configs else None


# -- the app --------------------------------------------------------------------------------------

def make_client_app(config: Config | None = None) -> ClientApp:
    """fedattack's ClientApp; `config` is the client's own config (None: read its run config)."""
    fixed = None if config is None else json.dumps(client_view(config.to_dict()), sort_keys=True, default=str)
    app = ClientApp()

    def setup(msg: Message, context: Context):
        view = own_config(context, fixed)
        exp = client_experiment(view)
        key, arrays, record = _records(msg)
        cfg = with_protocol(exp.cfg, record)
        torch.set_num_threads(max(1, int(cfg.fl.client_cpus)))
        model = exp.initial_model()
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        rnd = int(record.get("server-round", 0)) if record is not None else 0
        return exp, cfg, model, key, arrays, rnd

    def defense_mods(msg: Message, context: Context, call_next) -> Message:
        """Flower's DP mods for the protocol-level defenses of this client's own config."""
        if not msg.content.array_records:
            return call_next(msg, context)
        _, arrays, record = _records(msg)
        cfg = with_protocol(client_experiment(own_config(context, fixed)).cfg, record)
        mods = client_mods(cfg)
        if not mods:
            return call_next(msg, context)
        if any(not np.issubdtype(a.numpy().dtype, np.floating) for a in arrays.values()):
            raise ConfigError("client.defenses", "Flower's DP mods clip every array of the model and fail on integer "
                                                 "buffers (BatchNorm's num_batches_tracked); use a model without "
                                                 "BatchNorm (model.name=lenet or mlp)")
        handler = call_next
        for mod in mods:  # the first configured defense is innermost: it acts first on the reply
            handler = partial(_through, mod, handler)
        rnd = int(record.get("server-round", 0)) if record is not None else 0
        # Flower's DP noise draws from NumPy's global generator
        with numpy_seed(_numpy_seed_of(cfg.seed, rnd, context, stream=2)):
            reply = handler(msg, context)
        if "localdp" in cfg.client.defenses and not reply.has_error():
            metrics = next(iter(reply.content.metric_records.values()))
            metrics["localdp_epsilon"] = float(cfg.defense("localdp").epsilon)
            if "epsilon" not in metrics:  # DP-SGD's, when both are in force, stays the reported one
                metrics["epsilon"] = metrics["localdp_epsilon"]
        return reply

    def seeded_secagg(msg: Message, context: Context, call_next) -> Message:
        """SecAgg+ (secaggplus_message_mod), whose quantization rounds each update stochastically
        with NumPy's global generator: seeded from (seed, round, client), as the DP mods' noise is,
        so that a run repeats (the masks cancel exactly in the sum; the rounding does not)."""
        if not is_secagg(msg):
            return call_next(msg, context)
        cfg = client_experiment(own_config(context, fixed)).cfg
        group = str(msg.metadata.group_id)  # Flower's SecAgg+ workflow: the round
        rnd = int(group) if group.isdigit() else 0
        with numpy_seed(_numpy_seed_of(cfg.seed, rnd, context, stream=3)):
            return secaggplus_message_mod(msg, context, call_next)

    @app.train(mods=[seeded_secagg, audit_mod, defense_mods])
    def train(msg: Message, context: Context) -> Message:
        exp, cfg, model, key, arrays, rnd = setup(msg, context)
        pid = _partition_id(context)
        result = local_train(model, exp.train, exp.partitions[pid], cfg, rnd=rnd, client=pid,
                             protocol_defenses=False)
        # the audit-only ground truth, and the steps it was trained in
        record_samples(*exp.train.get(result.indices), indices=result.indices, batches=result.steps)
        state = returned_state(model, arrays.to_torch_state_dict(), result.update)  # BatchNorm buffers as trained
        metrics = {"num-examples": result.num_examples, "train_loss": result.loss, "local_steps": result.steps}
        metrics.update({k: float(v) for k, v in result.metrics.items()})
        if "dp_steps" in metrics:
            _compose_dp(context, metrics)
        return Message(content=RecordDict({key: ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate_local(msg: Message, context: Context) -> Message:
        exp, _, model, _, _, _ = setup(msg, context)
        idx = exp.partitions[_partition_id(context)]
        part = ImageData(fetch=lambda i: exp.train.fetch(int(idx[i])), targets=exp.train.targets[idx],
                         spec=exp.train.spec)
        loss, acc = evaluate(model, part)
        content = RecordDict({"metrics": MetricRecord({"num-examples": len(idx), "eval_loss": loss, "eval_acc": acc})})
        return Message(content=content, reply_to=msg)

    return app


def _through(mod, inner, msg: Message, context: Context) -> Message:
    return mod(msg, context, inner)


def _compose_dp(context: Context, metrics: dict) -> None:
    """Add `epsilon_total`: this client's DP-SGD rounds so far, composed with Opacus's RDP accountant."""
    from opacus.accountants import RDPAccountant

    key = "fedattack.dpsgd"
    old = context.state[key] if key in context.state else ConfigRecord({"noise": [], "rate": [], "steps": []})
    hist = {k: list(old[k]) + [float(metrics[f"dp_{n}"])] for k, n in
            (("noise", "noise_multiplier"), ("rate", "sample_rate"), ("steps", "steps"))}
    context.state[key] = ConfigRecord(hist)
    acc = RDPAccountant()
    acc.history = [(z, q, int(t)) for z, q, t in zip(hist["noise"], hist["rate"], hist["steps"]) if t > 0]
    metrics["epsilon_total"] = float(acc.get_epsilon(float(metrics["dp_delta"]))) if acc.history else 0.0


app = make_client_app()  # `flwr run .`: the config comes from the run config


def train_config(cfg: Config) -> ConfigRecord:
    """The numeric protocol values a fedattack server sends with every train message."""
    c = cfg.client
    out: dict[str, Any] = {"lr": float(c.lr), "batch-size": int(c.batch_size), "momentum": float(c.momentum)}
    if c.proximal_mu:
        out["proximal-mu"] = float(c.proximal_mu)
    if c.local_steps > 0:
        out["local-steps"] = int(c.local_steps)
    else:
        out["local-epochs"] = int(c.local_epochs)
    for d in cfg.client.defenses:
        if DEFENSES.get(d).model_extension:
            continue
        for name, value in dataclasses.asdict(cfg.defense(d)).items():
            if _numeric(value):
                out[f"{d}.{name}"] = value
    return ConfigRecord(out)


__all__ = ["app", "make_client_app", "client_view", "with_protocol", "train_config", "PROTOCOL_KEYS"]
