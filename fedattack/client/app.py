"""The Flower ClientApp (Message API). The server sends the fedattack config with every
train message; the client builds the experiment once per process and trains its partition.

The reply carries the new weights and metrics as any Flower client's would, plus an
`audit` ConfigRecord (partition id, indices of the samples trained on) that only the
simulation's scorer reads: AuditStrategy removes it before any strategy or attack sees the
reply.

Protocol-level DP defenses (`flowerdp`, `localdp`) are Flower's own client mods, attached to
the train function only (mods on the whole app would also run on evaluate messages); the
config arrives with each message, so `defense_mods` reads it and calls Flower's mods only
when those defenses are configured.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedattack.client.train import evaluate, local_train
from fedattack.data import ImageData
from fedattack.defenses.flower_dp import client_mods, numpy_seed
from fedattack.errors import ConfigError
from fedattack.experiment import from_config_json

CONFIG_KEY = "fedattack"  # key of the serialized config inside the train ConfigRecord
AUDIT_KEY = "audit"

app = ClientApp()


def _partition_id(context: Context) -> int:
    node = context.node_config
    if "partition-id" not in node:
        raise RuntimeError("fedattack clients need node_config['partition-id'] (set by the simulation)")
    return int(node["partition-id"])


def _setup(msg: Message):
    exp = from_config_json(str(msg.content["config"][CONFIG_KEY]))
    torch.set_num_threads(max(1, int(exp.cfg.fl.client_cpus)))
    model = exp.initial_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    return exp, model


def _round(msg: Message) -> int:
    return int(msg.content["config"].get("server-round", 0))


def defense_mods(msg: Message, context: Context, call_next) -> Message:
    """Run Flower's DP mods for the protocol-level defenses configured in the message."""
    record = msg.content["config"] if "config" in msg.content else None
    if record is None or CONFIG_KEY not in record:
        return call_next(msg, context)
    cfg = from_config_json(str(record[CONFIG_KEY])).cfg
    mods = client_mods(cfg)
    if not mods:
        return call_next(msg, context)
    arrays = msg.content["arrays"]
    if any(not np.issubdtype(a.numpy().dtype, np.floating) for a in arrays.values()):
        raise ConfigError("client.defenses", "Flower's DP mods clip every array of the model and fail on integer "
                                             "buffers (BatchNorm's num_batches_tracked); use a model without "
                                             "BatchNorm (model.name=lenet or mlp)")
    handler = call_next
    for mod in mods:  # the first configured defense is innermost: it acts first on the reply
        handler = partial(_through, mod, handler)
    seed = int(np.random.default_rng([cfg.seed, _round(msg), _partition_id(context), 2]).integers(2**31))
    with numpy_seed(seed):  # Flower's DP noise draws from NumPy's global generator
        reply = handler(msg, context)
    if "localdp" in cfg.client.defenses and not reply.has_error():
        metrics = reply.content["metrics"]
        metrics["localdp_epsilon"] = float(cfg.defense("localdp").epsilon)
        if "epsilon" not in metrics:  # DP-SGD's, when both are in force, stays the reported one
            metrics["epsilon"] = metrics["localdp_epsilon"]
    return reply


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


@app.train(mods=[defense_mods])
def train(msg: Message, context: Context) -> Message:
    exp, model = _setup(msg)
    pid = _partition_id(context)
    rnd = _round(msg)
    result = local_train(model, exp.train, exp.partitions[pid], exp.cfg, rnd=rnd, client=pid, protocol_defenses=False)
    with torch.no_grad():  # send global + defended update, BatchNorm buffers as trained
        state = {k: v.clone() for k, v in model.state_dict().items()}
        sent = msg.content["arrays"].to_torch_state_dict()
        for k, u in result.update.items():
            state[k] = sent[k] + u
    metrics = {"num-examples": result.num_examples, "train_loss": result.loss, "local_steps": result.steps}
    metrics.update({k: float(v) for k, v in result.metrics.items()})
    if "dp_steps" in metrics:
        _compose_dp(context, metrics)
    content = RecordDict({
        "arrays": ArrayRecord(state),
        "metrics": MetricRecord(metrics),
        AUDIT_KEY: ConfigRecord({"partition-id": pid, "indices": result.indices}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    exp, model = _setup(msg)
    pid = _partition_id(context)
    idx = exp.partitions[pid]
    part = ImageData(fetch=lambda i: exp.train.fetch(int(idx[i])), targets=exp.train.targets[idx],
                     spec=exp.train.spec)
    loss, acc = evaluate(model, part)
    content = RecordDict({"metrics": MetricRecord({"num-examples": len(idx), "eval_loss": loss, "eval_acc": acc})})
    return Message(content=content, reply_to=msg)
