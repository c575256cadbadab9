"""SecAgg+ for a Message-API ClientApp: Flower's `secaggplus_mod`, bridged.

Flower 1.42 runs SecAgg+ only through its legacy workflow: the server sends legacy `FitIns`
(unnamed parameters) and `secaggplus_mod` expects the train function to answer with a legacy
`FitRes`. `secaggplus_message_mod` lets a Message-API train function take part unchanged: it
hands Flower's mod a function that turns the FitIns into a Message-API train message (the
arrays named by the `fedattack.array-keys` entry the server's bridge adds to the config, under
the strategy's `arrayrecord_key`; the config under its `configrecord_key`; both named by the
`fedattack.record-keys` entry), calls the train function, and turns its reply back into
a FitRes (arrays in that order; as the example count, the metric the strategy weighs replies by,
named by the `fedattack.weight-key` entry; the metrics; the audit-only records packed into the
metrics). A reply without that metric is an error, as it is to Flower's FedAvg without SecAgg+.
Messages without SecAgg+ stage records pass straight through, so the same ClientApp serves plain
and secure-aggregation runs.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedattack.client.record import pack_legacy

ARRAY_KEYS = "fedattack.array-keys"  # FitIns config entry: the ArrayRecord's keys, comma-separated, in order
RECORD_KEYS = "fedattack.record-keys"  # FitIns config entry: "<arrayrecord_key>,<configrecord_key>" of the strategy
WEIGHT_KEY = "fedattack.weight-key"  # FitIns config entry: the strategy's weighted_by_key (the example count's metric)


def is_secagg(msg: Message) -> bool:
    """The message is one of SecAgg+'s stages (it carries their config record)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secaggplus_message_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower client mod: SecAgg+ (Flower's `secaggplus_mod`) around a Message-API train function."""
    if not is_secagg(msg):
        return call_next(msg, context)

    def legacy_train(legacy: Message, ctx: Context) -> Message:
        train, weight_key = as_message_api(legacy)
        reply = call_next(train, ctx)
        if reply.has_error():
            return reply
        return Message(as_fitres(reply.content, weight_key), reply_to=legacy)

    return secaggplus_mod(msg, context, legacy_train)


def as_message_api(legacy: Message) -> tuple[Message, str]:
    """A legacy FitIns message as the Message-API train message it stands for, and the metric
    the strategy weighs replies by (its weighted_by_key, sent along by the server's bridge)."""
    fitins = compat.recorddict_to_fitins(legacy.content, keep_input=True)
    config = dict(fitins.config)
    keys = str(config.pop(ARRAY_KEYS, "")).split(",")
    weight_key = str(config.pop(WEIGHT_KEY, "num-examples"))
    array_key, _, config_key = str(config.pop(RECORD_KEYS, "arrays,config")).partition(",")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        keys = [str(i) for i in range(len(arrays))]
    content = RecordDict({array_key or "arrays": ArrayRecord({k: Array(a) for k, a in zip(keys, arrays)}),
                          config_key or "config": ConfigRecord(config)})
    return Message(content, metadata=legacy.metadata), weight_key


def as_fitres(content: RecordDict, weight_key: str = "num-examples") -> RecordDict:
    """A Message-API train reply's content as a legacy FitRes record dict, its example count the
    metric `weight_key` (the strategy's weighted_by_key)."""
    audit = pack_legacy(content)
    arrays = next(iter(content.array_records.values()))
    metrics: dict[str, Any] = dict(next(iter(content.metric_records.values()))) if content.metric_records else {}
    if not isinstance(metrics.get(weight_key), (int, float)):
        raise ValueError(f"the train reply's metrics lack '{weight_key}', the example count the strategy weighs "
                         f"replies by (its weighted_by_key), which SecAgg+ needs; they have {sorted(metrics)}")
    num_examples = int(metrics[weight_key])
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    fitres = FitRes(status=Status(Code.OK, "Success"), parameters=ndarrays_to_parameters(
        [a.numpy() for a in arrays.values()]), num_examples=num_examples, metrics={**scalars, **audit})
    return compat.fitres_to_recorddict(fitres, keep_input=False)
