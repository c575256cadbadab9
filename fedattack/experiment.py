"""Everything a config determines before training starts: data, partitions, model.

Clients and the server each build the `Experiment` of their own copy of the config (a client
from its own installation and run config, never from a message), so a seed fixes partitions and
initial weights everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fedattack.attacks import ATTACKS
from fedattack.data import ImageData, load_dataset, partition
from fedattack.data.datasets import Splits
from fedattack.defenses import DEFENSES
from fedattack.models import MODELS, build_model, own_module_class
from fedattack.schema import Config
from fedattack.threat import DefenseSetting, ModelSpec, ModuleSource


@dataclass
class Experiment:
    cfg: Config
    splits: Splits
    partitions: list[np.ndarray]
    model_spec: ModelSpec

    @property
    def train(self) -> ImageData:
        return self.splits.train

    @property
    def test(self) -> ImageData:
        return self.splits.test

    def initial_model(self) -> torch.nn.Module:
        return build_model(self.model_spec, seed=self.cfg.seed)

    def defense_settings(self) -> tuple[DefenseSetting, ...]:
        return tuple(DefenseSetting(d, asdict(self.cfg.defense(d))) for d in self.cfg.client.defenses)


def model_spec(cfg: Config, splits: Splits) -> ModelSpec:
    """The model the server distributes, with the extensions the configured defenses (and a
    malicious server's attacks) name."""
    extensions = []
    for d in cfg.client.defenses:
        ext = DEFENSES.get(d).model_extension
        if ext:
            extensions.append((ext, json.dumps(asdict(cfg.defense(d)), sort_keys=True)))
    if cfg.server.mode == "malicious":
        for a in cfg.audit.attacks:
            ext = ATTACKS.get(a).model_extension
            if ext:
                extensions.append((ext, json.dumps(asdict(cfg.attack(a)), sort_keys=True)))
    spec = splits.train.spec
    builder = MODELS.get(cfg.model.name)
    own = ModuleSource(factory=builder) if own_module_class(builder) else None  # built as the class's own ()
    return ModelSpec(name=cfg.model.name, activation=cfg.model.activation, num_classes=spec.num_classes,
                     in_shape=spec.shape, width=cfg.model.width, init=cfg.model.init,
                     init_scale=cfg.model.init_scale, extensions=tuple(extensions), module=own)


def build(cfg: Config, *, partitions: bool = True) -> Experiment:
    """Data, client partitions (skipped with `partitions=False`: one victim, no federation) and model spec."""
    splits = load_dataset(cfg.data, seed=cfg.seed)
    parts = (partition(splits.train.targets, num_clients=cfg.fl.num_clients, cfg=cfg.partition, seed=cfg.seed)
             if partitions else [])
    return Experiment(cfg, splits, parts, model_spec(cfg, splits))
