"""Config loading, overrides and the one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedattack import config as fconfig
from fedattack.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_config_reference_documents_exactly_the_schema():
    import re
    from dataclasses import fields

    from fedattack.schema import SECTIONS

    text = (ROOT / "docs" / "config.md").read_text()
    documented = set()
    for row in re.findall(r"(?m)^\| (`[^|]*`) \|", text):
        documented |= set(re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)?)`", row))
    schema = {"seed"} | {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)}
    assert schema - documented == set(), "keys missing from docs/config.md"
    plugin_sections = {k for k in documented - schema if k.split(".")[0] in ("dlg", "idlg", "invgrad")}  # default's
    assert documented - schema - plugin_sections == set(), "docs/config.md documents keys the schema lacks"


def test_default_config_runs_the_documented_default_scenario():
    cfg = fconfig.load(None)
    assert (cfg.data.name, cfg.partition.name, cfg.partition.alpha) == ("lfw-subset", "dirichlet", 0.5)
    assert (cfg.fl.num_clients, cfg.fl.rounds, cfg.fl.clients_per_round, cfg.fl.strategy) == (8, 5, 2, "fedavg")
    assert (cfg.client.local_steps, cfg.client.batch_size, cfg.client.lr) == (2, 2, 0.1)
    assert (cfg.model.name, cfg.model.activation) == ("mlp", "relu")
    assert cfg.audit.attacks == ["idlg", "dlg", "invgrad"] and cfg.audit.max_clients == 0  # every sampled client
    # every listed attack has its parameters; the default config cuts dlg's and idlg's L-BFGS evaluations
    # and invgrad's iterations
    assert set(cfg.attack_params) == {"idlg", "dlg", "invgrad"}
    assert cfg.attack("dlg").max_iter == cfg.attack("idlg").max_iter == 1 and cfg.attack("invgrad").iterations == 800
    with pytest.raises(ConfigError, match=r"^audit\.attacks: 'rtf' is not a configured attack"):
        cfg.attack("rtf")


def test_overrides_parse_types_and_lists():
    cfg = fconfig.load(None, ["audit.attacks=[dlg,idlg]", "client.lr=0.1", "fl.rounds=5", "victim.indices=[1,2,3]",
                              "dlg.optimizer=adam", "data.root=/tmp/x"])
    assert cfg.audit.attacks == ["dlg", "idlg"]
    assert cfg.client.lr == 0.1 and isinstance(cfg.client.lr, float)
    assert cfg.fl.rounds == 5
    assert cfg.victim.indices == [1, 2, 3]
    assert cfg.attack("dlg").optimizer == "adam"


def test_yes_no_on_off_are_words_not_booleans(tmp_path):
    """YAML 1.2's booleans: `audit.adaptive=on` is the word its choices list, on the command line
    and in a file; a boolean field takes true or false only."""
    assert fconfig.load(None, ["audit.adaptive=on"]).audit.adaptive == "on"
    assert fconfig.load(None, ["audit.adaptive=off"]).audit.adaptive == "off"
    p = tmp_path / "c.yaml"
    p.write_text("audit: {adaptive: on, calibrate: True}\n")
    cfg = fconfig.load(p)
    assert cfg.audit.adaptive == "on" and cfg.audit.calibrate is True
    with pytest.raises(ConfigError, match=r"^audit\.adaptive: unknown value 'yes'; allowed: off, on, both"):
        fconfig.load(None, ["audit.adaptive=yes"])
    with pytest.raises(ConfigError, match=r"^audit\.adaptive: unknown value 'true'; allowed: off, on, both"):
        fconfig.load(None, ["audit.adaptive=true"])
    with pytest.raises(ConfigError, match=r"^audit\.calibrate: expected true or false, got 'yes'"):
        fconfig.load(None, ["audit.calibrate=yes"])


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
    ("data.image_key=img", "data.image_key"),  # a column name, for hf: datasets only
    ("data.label_key=label", "data.label_key"),
    ("audit.lpips_weights=/no/such/folder", "audit.lpips_weights"),
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
    twice = tmp_path / "twice.yaml"
    twice.write_text("fl:\n  rounds: 2\ndata:\n  name: digits\nfl:\n  rounds: 3\n")
    with pytest.raises(ConfigError, match=r"^fl: is given twice in one mapping \(line 5\)"):
        fconfig.load(twice)
    with pytest.raises(ConfigError, match=r"^fl.rounds: is given twice"):
        fconfig.load(None, ["fl={rounds: 2, rounds: 3}"])
    nested = tmp_path / "nested.yaml"
    nested.write_text("fl:\n  rounds: 2\n  strategy_args: {proximal_mu: 0.1, proximal_mu: 0.2}\n")
    with pytest.raises(ConfigError, match=r"^fl.strategy_args.proximal_mu: is given twice in one mapping \(line 3\)"):
        fconfig.load(nested)


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


def test_a_strategy_object_keeps_its_sampling_which_must_be_the_configured_participation():
    """A strategy given as an object is not rebuilt: FedAvg() sampled all 8 clients while the
    header and the report said 2 per round. Its sampling must match fl.*, or it is refused."""
    from fedattack.server.strategies import build_strategy

    path = "fl.strategy=tests.plugins.user_strategy:"
    with pytest.raises(ConfigError, match=r"^fl\.clients_per_round: .* 8 of fl.num_clients=8 clients per round "
                                          r"\(fraction_train=1, min_train_nodes=2\); allowed: fl.clients_per_round=8"):
        fconfig.load(None, ["audit.attacks=[]", path + "EVERY_CLIENT", "fl.num_clients=8", "fl.clients_per_round=2"])
    fconfig.load(None, ["audit.attacks=[]", path + "EVERY_CLIENT", "fl.num_clients=8", "fl.clients_per_round=8"])
    cfg = fconfig.load(None, ["audit.attacks=[]", path + "QUARTER_OF_EIGHT", "fl.num_clients=8",
                              "fl.clients_per_round=2"])
    assert build_strategy(cfg).fraction_train == 0.25
    with pytest.raises(ConfigError, match=r"^fl\.num_clients: .* waits for 8 clients .*allowed: fl.num_clients >= 8"):
        fconfig.load(None, ["audit.attacks=[]", path + "QUARTER_OF_EIGHT", "fl.num_clients=4",
                            "fl.clients_per_round=2"])


def test_scientific_notation_without_a_dot_is_a_number():
    cfg = fconfig.load(None, ["audit.attacks=[idlg]", "client.lr=1e-3"])
    assert cfg.client.lr == 0.001


def test_yaml_tags_that_would_run_code_are_never_constructed(tmp_path):
    """Configs load with a SafeLoader (fedattack.config._Loader): a python/object tag is a
    one-line error in a file, and a plain string on the command line; nothing runs."""
    mark = tmp_path / "ran"
    tag = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{mark}']]"
    p = tmp_path / "c.yaml"
    p.write_text(f"seed: {tag}\n")
    with pytest.raises(ConfigError):
        fconfig.load(p)
    with pytest.raises(ConfigError, match=r"^fl\.rounds: expected an integer, got .!!python/object/apply"):
        fconfig.load(None, [f"fl.rounds={tag}"])
    assert not mark.exists()


def test_an_unknown_dataset_names_every_form_data_name_takes():
    with pytest.raises(ConfigError, match=r"^data.name: unknown dataset 'nope'; allowed: hf:NAME, .*lfw-subset.* or "
                                          r"module:attr$"):
        fconfig.load(None, ["data.name=nope"])


def test_an_unknown_strategy_argument_lists_only_the_arguments_one_may_set():
    with pytest.raises(ConfigError, match=r"^fl.strategy_args: 'proximal_m' is not an argument of fedprox; allowed: ") as e:
        fconfig.load(None, ["fl.strategy=fedprox", "fl.strategy_args={proximal_m: 0.5}"])
    allowed = str(e.value).split("allowed: ")[1].split(", ")
    assert "proximal_mu" in allowed and "fraction_evaluate" in allowed
    assert not {"fraction_train", "min_train_nodes", "min_available_nodes"} & set(allowed)  # set from fl.* instead
    # without a space after the colon, YAML reads one key: the error says how to write it
    with pytest.raises(ConfigError, match=r"^fl.strategy_args: 'proximal_mu:0.1' is not an argument of fedprox "
                                          r"\(a mapping needs a space after each colon: \{proximal_mu: 0.1\}, quoted"):
        fconfig.load(None, ["fl.strategy=fedprox", "fl.strategy_args={proximal_mu:0.1}"])


def test_a_victim_index_listed_twice_is_refused():
    with pytest.raises(ConfigError, match=r"^victim.indices: 3 is listed twice; each index is one of the victim's"):
        fconfig.load(None, ["victim.indices=[3,5,3]"])


def test_a_plug_in_named_by_its_name_and_by_its_path_is_listed_twice():
    from fedattack.attacks import ATTACKS
    from fedattack.config import listed_twice
    from fedattack.defenses import DEFENSES

    import tests.plugins.defense  # noqa: F401 - its DefenseSpec is a module attribute, registered by path

    assert listed_twice(ATTACKS, ["idlg", "invgrad"]) is None
    assert listed_twice(ATTACKS, ["idlg", "idlg"]) == ("'idlg' is listed twice", "idlg")
    assert listed_twice(ATTACKS, ["tests.plugins.failing:boom", "idlg", "boom"]) == (
        "'tests.plugins.failing:boom' and 'boom' name the same plug-in", "boom")
    assert listed_twice(DEFENSES, ["tests.plugins.defense:drop_head", "gaussian"]) is None


def test_bulyan_needs_as_many_replies_as_flower_aggregates():
    from fedattack.strategies import check_replies

    check_replies("bulyan", {}, 3)  # 4 * 0 + 3
    check_replies("bulyan", {"num_malicious_nodes": 1}, 7)
    check_replies("krum", {}, 2)  # Krum, MultiKrum and the others aggregate two replies
    with pytest.raises(ConfigError, match=r"^fl.clients_per_round: .*allowed: fl.clients_per_round >= 7$"):
        check_replies("bulyan", {"num_malicious_nodes": 1}, 6)

