"""Config loading, overrides and the one-line errors for bad input."""

from __future__ import annotations

import pytest

from fedattack import config as fconfig
from fedattack.errors import ConfigError


def test_default_config_loads_and_has_the_documented_keys():
    cfg = fconfig.load(None, ["audit.attacks=[]"])
    assert cfg.data.name == "lfw-subset"
    assert cfg.partition.name == "dirichlet"
    assert cfg.fl.num_clients >= 8 and cfg.fl.rounds >= 3
    assert cfg.client.local_steps >= 2
    for key in ("seed",):
        assert hasattr(cfg, key)
    for section, keys in {
        "data": ["name", "root", "image_size"], "partition": ["name", "alpha"], "model": ["name", "activation"],
        "fl": ["num_clients", "rounds", "clients_per_round", "strategy"],
        "client": ["local_epochs", "local_steps", "batch_size", "lr"],
        "audit": ["attacks", "every", "max_clients", "gpus_per_job"], "victim": ["indices"],
    }.items():
        for k in keys:
            assert hasattr(getattr(cfg, section), k), f"{section}.{k}"


def test_overrides_parse_types_and_lists():
    cfg = fconfig.load(None, ["audit.attacks=[dlg,idlg]", "client.lr=0.1", "fl.rounds=5", "victim.indices=[1,2,3]",
                              "dlg.optimizer=adam", "data.root=/tmp/x"])
    assert cfg.audit.attacks == ["dlg", "idlg"]
    assert cfg.client.lr == 0.1 and isinstance(cfg.client.lr, float)
    assert cfg.fl.rounds == 5
    assert cfg.victim.indices == [1, 2, 3]
    assert cfg.attack("dlg").optimizer == "adam"


def test_round_trip_through_json_and_yaml(tmp_path):
    cfg = fconfig.load(None, ["audit.attacks=[dlg]", "dlg.iterations=7", "seed=3"])
    again = fconfig.from_json(cfg.to_json())
    assert again.to_dict() == cfg.to_dict()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert fconfig.load(p).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override, field", [
    ("client.lr=0", "client.lr"),
    ("client.lr=-1", "client.lr"),
    ("partition.alpha=0", "partition.alpha"),
    ("fl.num_clients=0", "fl.num_clients"),
    ("fl.clients_per_round=20", "fl.clients_per_round"),
    ("model.name=vgg99", "model.name"),
    ("model.activation=gelu", "model.activation"),
    ("data.name=imagenet", "data.name"),
    ("audit.attacks=[nope]", "audit.attacks"),
    ("fl.strategy=fedfoo", "fl.strategy"),
    ("partition.name=zipf", "partition.name"),
    ("client.nonsense=1", "client.nonsense"),
    ("nosection.key=1", "nosection"),
    ("fl.rounds=abc", "fl.rounds"),
    ("dlg.optimizer=sgd", "dlg.optimizer"),
    ("victim.indices=[-1]", "victim.indices"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        fconfig.load(None, ["audit.attacks=[dlg]", override])
    assert str(info.value).startswith(field + ":")
    assert "\n" not in str(info.value)


def test_unknown_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as info:
        fconfig.load(None, ["model.name=vgg99"])
    for name in ("lenet", "convnet", "resnet18", "mlp"):
        assert name in str(info.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fl: [unclosed\n  rounds: 3\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        fconfig.load(bad)
    with pytest.raises(ConfigError, match="file not found"):
        fconfig.load(tmp_path / "missing.yaml")


def test_user_strategy_by_import_path_is_built_with_the_configured_participation():
    from flwr.serverapp.strategy import FedAvg

    from fedattack.server.strategies import build_strategy

    cfg = fconfig.load(None, ["audit.attacks=[]", "fl.strategy=flwr.serverapp.strategy:FedAvg", "fl.num_clients=5",
                              "fl.clients_per_round=2"])
    strategy = build_strategy(cfg)
    assert type(strategy) is FedAvg
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (0.4, 2, 5)
    assert strategy.fraction_evaluate == 0.0  # evaluation is centralized, on the server's test split
    # an import path is named at load time and imported where the strategy is built
    bad = fconfig.load(None, ["audit.attacks=[]", "fl.strategy=no_such_module:Strategy"])
    with pytest.raises(ConfigError, match=r"^fl\.strategy: cannot import 'no_such_module:Strategy'"):
        build_strategy(bad)


def test_scientific_notation_without_a_dot_is_a_number():
    cfg = fconfig.load(None, ["audit.attacks=[idlg]", "client.lr=1e-3"])
    assert cfg.client.lr == 0.001
