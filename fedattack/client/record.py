"""The audit-only record: which samples a client trained on, for scoring in simulation.

Two pieces in the user's own ClientApp, neither of which changes how it trains:

    from fedattack import AuditedLoader, audit_mod

    @app.train(mods=[audit_mod])                      # attach the record to the train reply
    def train(msg, context):
        ...
        trainloader = AuditedLoader(trainloader)      # record the batches the loop trains on

`audit_mod` opens a recording around the train function and attaches to its reply the
client's id (`node_config["partition-id"]` in a simulation, else the node id) and the samples
recorded: the model inputs exactly as the training loop received them (after the app's own
transforms, in model-input space) and their labels, as an ArrayRecord. `AuditedLoader` wraps the
user's DataLoader (or any iterable of batches: (x, y) pairs or dicts with an image and a label
entry) and records every batch it yields while a recording is open; a sample seen twice (a
second epoch) is recorded once. `record_samples(x, y)` records from a loop of one's own.

The server's audit strategy removes both records from each reply before the wrapped strategy
or any attack sees it; only the scorer reads them. Without `audit_mod` (a real deployment) the
reply has no record and the audit runs unscored. Put `audit_mod` first in the list of mods:
the record is then attached after every other mod has acted on the reply.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

AUDIT_KEY = "fedattack.audit"  # ConfigRecord: client id, number of samples recorded, a note
TRUTH_KEY = "fedattack.truth"  # ArrayRecord: "images" (N, C, H, W) model inputs, "labels" (N,), "indices" (N,) if known
IDENTIFY_KEY = "fedattack.identify"  # a train message without arrays: the server asks who the node is
LEGACY_PREFIX = "fedattack."  # record entries inside a legacy FitRes's metrics (SecAgg+)

IMAGE_KEYS = ("img", "image", "images", "pixel_values", "x")
LABEL_KEYS = ("label", "labels", "fine_label", "target", "y")


class SampleRecording:
    """The distinct samples a client trained on during one train call."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        self.indices: list[int] = []  # dataset indices, where every sample came with one
        self._seen: set = set()
        self.note = ""  # why samples could not be recorded, if they could not
        self.batches = 0  # batches recorded (AuditedLoader's yields, record_samples' `batches`): the steps taken

    def add(self, images: Any, labels: Any, indices: Iterable[int] | None = None, batches: int = 1) -> None:
        self.batches += batches
        x = torch.as_tensor(images).detach().cpu().float()
        y = torch.as_tensor(labels).detach().cpu().reshape(-1)
        if x.dim() == 3:  # one (C, H, W) sample
            x = x[None]
        if x.dim() != 4 or len(x) != len(y):
            self.note = (f"recorded batches must be images (N, C, H, W) with N labels; got images of shape "
                         f"{tuple(x.shape)} and {len(y)} labels")
            return
        keys = list(indices) if indices is not None else None
        for i in range(len(x)):
            key = int(keys[i]) if keys is not None else hashlib.sha1(
                x[i].numpy().tobytes() + str(int(y[i])).encode()).hexdigest()
            if key in self._seen:
                continue
            self._seen.add(key)
            self.images.append(x[i].clone())
            self.labels.append(int(y[i]))
            if keys is not None:
                self.indices.append(int(keys[i]))

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """images, labels and (where every sample's dataset index is known) indices."""
        out = {"images": torch.stack(self.images).numpy(), "labels": np.asarray(self.labels, dtype=np.int64)}
        if len(self.indices) == len(self.labels):  # a sample without an index leaves the lists unequal
            out["indices"] = np.asarray(self.indices, dtype=np.int64)
        return out


_RECORDING: ContextVar[SampleRecording | None] = ContextVar("fedattack_recording", default=None)


def record_samples(images: Any, labels: Any, indices: Iterable[int] | None = None, *, batches: int = 1) -> None:
    """Record samples the client trains on (model inputs and labels), from a loop of your own.

    Does nothing outside a train call wrapped by `audit_mod`. `indices` (dataset indices) tell
    repeated samples apart; without them a sample is known by its content. `batches`: the
    training batches (local steps) these samples stand for, which the audit checks against the
    protocol it replays: 1 for a call per batch; a loop that records everything it trained on
    at once passes its step count."""
    rec = _RECORDING.get()
    if rec is not None:
        rec.add(images, labels, indices, batches=batches)


class AuditedLoader:
    """Your DataLoader, recording every batch it yields inside a train call wrapped by `audit_mod`.

    Parameters
    ----------
    loader : Iterable
        The DataLoader (or any iterable of batches) your train function iterates over. Batches
        are `(images, labels, ...)` sequences or mappings with an image and a label entry.
    image_key : Optional[str] (default: None)
        Key of the model inputs in mapping batches; None tries "img", "image", "images",
        "pixel_values", "x".
    label_key : Optional[str] (default: None)
        Key of the labels in mapping batches; None tries "label", "labels", "fine_label",
        "target", "y".

    Everything else (`len`, `dataset`, `batch_size`, ...) is the wrapped loader's.
    """

    def __init__(self, loader: Iterable, *, image_key: str | None = None, label_key: str | None = None):
        self.loader = loader
        self.image_key = image_key
        self.label_key = label_key

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            rec = _RECORDING.get()
            if rec is not None:
                split = self._split(batch)
                if isinstance(split, str):
                    rec.note = split
                else:
                    rec.add(*split)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "image_key", "label_key") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _split(self, batch: Any) -> tuple[Any, Any] | str:
        """(images, labels) of one batch, or why they cannot be told apart."""
        if isinstance(batch, Mapping):
            x_key = self.image_key or next((k for k in IMAGE_KEYS if k in batch), None)
            y_key = self.label_key or next((k for k in LABEL_KEYS if k in batch), None)
            for given, what in ((self.image_key, "image_key"), (self.label_key, "label_key")):
                if given is not None and given not in batch:
                    return f"AuditedLoader: {what}={given!r} is not a key of the batches (they have {sorted(batch)})"
            if x_key not in batch or y_key not in batch:
                return (f"AuditedLoader: batches have keys {sorted(batch)}; give image_key= and label_key= "
                        "to say which hold the model inputs and the labels")
            return batch[x_key], batch[y_key]
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0], batch[1]
        return f"AuditedLoader: cannot read images and labels from a batch of type {type(batch).__name__}"


def client_id(context: Context) -> int:
    """The id the audit reports a client under: its partition id in a simulation, else its node id."""
    node = context.node_config
    return int(node["partition-id"]) if "partition-id" in node else int(context.node_id)


def audit_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower client mod: record the samples the train function trains on, attach them to its reply.

    Use it on the train function only (`@app.train(mods=[audit_mod, ...])`), first in the list.
    It also answers the audit's identification message (a train message carrying only
    `fedattack.identify`, sent once before round 1 when the server samples by seed) without
    calling the train function.
    """
    if IDENTIFY_KEY in msg.content.config_records and not msg.content.array_records:
        return Message(RecordDict({IDENTIFY_KEY: ConfigRecord({"client": client_id(context)})}), reply_to=msg)
    if _RECORDING.get() is not None:  # a second audit_mod around the same call
        return call_next(msg, context)
    rec = SampleRecording()
    token = _RECORDING.set(rec)
    try:
        reply = call_next(msg, context)
    finally:
        _RECORDING.reset(token)
    if reply.has_error():
        return reply
    note = rec.note or ("" if len(rec) else "the train function recorded no samples (wrap its DataLoader in "
                                             "fedattack.AuditedLoader, or call fedattack.record_samples)")
    reply.content[AUDIT_KEY] = ConfigRecord({"client": client_id(context), "samples": len(rec), "note": note,
                                             "batches": rec.batches})
    if len(rec) and not rec.note:
        reply.content[TRUTH_KEY] = ArrayRecord({k: Array(v) for k, v in rec.arrays().items()})
    return reply


# -- the server's side of the record ----------------------------------------------------------

@dataclass(frozen=True)
class ClientRecord:
    """What one reply's audit-only record says (read by the server's scorer only)."""

    client: int
    images: np.ndarray | None  # (N, C, H, W) model inputs, None when nothing was recorded
    labels: np.ndarray | None
    note: str = ""  # why there are no samples, when there are none
    indices: np.ndarray | None = None  # their dataset indices, where the client knew them
    batches: int = 0  # batches the train function drew (0: not counted)


def pop_record(content: RecordDict) -> ClientRecord | None:
    """Remove the audit-only records from a reply's content; what they said (None: no record)."""
    audit = content[AUDIT_KEY] if AUDIT_KEY in content else None
    truth = content[TRUTH_KEY] if TRUTH_KEY in content else None
    for key in (AUDIT_KEY, TRUTH_KEY):
        if key in content:
            del content[key]
    if audit is None:
        return None
    images = labels = indices = None
    if truth is not None:
        images, labels = truth["images"].numpy(), truth["labels"].numpy()
        indices = truth["indices"].numpy() if "indices" in truth else None
    return ClientRecord(client=int(audit["client"]), images=images, labels=labels, note=str(audit.get("note", "")),
                        indices=indices, batches=int(audit.get("batches", 0)))


def pack_legacy(content: RecordDict) -> dict[str, Any]:
    """The audit-only records of a Message-API reply as entries of a legacy FitRes's metrics
    (numbers, strings and .npy bytes), removed from `content`: SecAgg+ replies travel as FitRes."""
    record = pop_record(content)
    if record is None:
        return {}
    out: dict[str, Any] = {f"{LEGACY_PREFIX}client": record.client, f"{LEGACY_PREFIX}note": record.note,
                           f"{LEGACY_PREFIX}batches": record.batches}
    if record.images is not None:
        out[f"{LEGACY_PREFIX}images"] = _npy(record.images)
        out[f"{LEGACY_PREFIX}labels"] = _npy(record.labels)
        if record.indices is not None:
            out[f"{LEGACY_PREFIX}indices"] = _npy(record.indices)
    return out


def unpack_legacy(metrics: dict[str, Any]) -> RecordDict:
    """The inverse of `pack_legacy`: remove the entries from `metrics`, return them as records."""
    entries = {k[len(LEGACY_PREFIX):]: metrics.pop(k) for k in list(metrics) if k.startswith(LEGACY_PREFIX)}
    out = RecordDict()
    if "client" not in entries:
        return out
    samples = 0
    if "images" in entries:
        images, labels = np.load(io.BytesIO(entries["images"])), np.load(io.BytesIO(entries["labels"]))
        arrays = {"images": Array(images), "labels": Array(labels)}
        if "indices" in entries:
            arrays["indices"] = Array(np.load(io.BytesIO(entries["indices"])))
        out[TRUTH_KEY] = ArrayRecord(arrays)
        samples = len(labels)
    out[AUDIT_KEY] = ConfigRecord({"client": int(entries["client"]), "samples": samples,
                                   "note": str(entries.get("note", "")), "batches": int(entries.get("batches", 0))})
    return out


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()
