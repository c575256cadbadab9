"""The Flower ClientApp (Message API). The server sends the fedattack config with every
train message; the client builds the experiment once per process and trains its partition.

The reply carries the new weights and metrics as any Flower client's would, plus an
`audit` ConfigRecord (partition id, indices of the samples trained on) that only the
simulation's scorer reads: AuditStrategy removes it before any strategy or attack sees the
reply.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedattack.client.train import evaluate, local_train
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


@app.train()
def train(msg: Message, context: Context) -> Message:
    exp, model = _setup(msg)
    pid = _partition_id(context)
    rnd = int(msg.content["config"].get("server-round", 0))
    result = local_train(model, exp.train, exp.partitions[pid], exp.cfg, rnd, pid)
    with torch.no_grad():  # send global + defended update, BatchNorm buffers as trained
        state = {k: v.clone() for k, v in model.state_dict().items()}
        sent = msg.content["arrays"].to_torch_state_dict()
        for k, u in result.update.items():
            state[k] = sent[k] + u
    metrics = {"num-examples": result.num_examples, "train_loss": result.loss, "local_steps": result.steps}
    metrics.update({k: float(v) for k, v in result.metrics.items()})
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
    from fedattack.data.datasets import ImageData

    part = ImageData(fetch=lambda i: exp.train.fetch(int(idx[i])), targets=exp.train.targets[idx],
                     spec=exp.train.spec)
    loss, acc = evaluate(model, part)
    content = RecordDict({"metrics": MetricRecord({"num-examples": len(idx), "eval_loss": loss, "eval_acc": acc})})
    return Message(content=content, reply_to=msg)
