"""The public API for a Flower user's own app, in process: a user's model (BatchNorm, dropout,
max-pooling, a layer of its own) through AuditStrategy, the audit-only record from the
client's own loader, unscored runs, bad replies, the protocol, seeded sampling, plug-in kinds."""

from __future__ import annotations

import csv
import pickle
import random

import cloudpickle
import numpy as np
import pytest
import torch
import torch.nn as nn
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedattack import AuditedLoader, AuditStrategy, TrainingProtocol, audit_mod
from fedattack.attacks import AttackSpec
from fedattack.errors import ConfigError, FedattackError
from fedattack.models import build_model
from fedattack.models.user import user_model_spec
from fedattack.server.dispatch import LocalDispatcher
from fedattack.server.sampling import SeededSampling


class Scale(nn.Module):
    """A layer of the user's own: a learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Scale(4),
                                      nn.MaxPool2d(2))
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).flatten(1)))


class RecordingFedAvg(FedAvg):
    """The user's strategy: records the record keys of the replies it aggregates."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[set[str]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen.append(set().union(*(set(r.content.keys()) for r in replies)))
        return super().aggregate_train(server_round, replies)


class FakeGrid(Grid):
    """Node ids only: the test plays the clients itself."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return set(self.node_ids)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError


def _batches(seed: int, n: int = 4, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1  # Normalize((0.5,)*3, (0.5,)*3) of [0, 1] pixels
    y = torch.randint(0, 3, (n,), generator=g)
    return [{"img": x[i:i + batch], "label": y[i:i + batch]} for i in range(0, n, batch)], x


def _user_train(msg: Message, context: Context, *, audited: bool = True, arrays_key: str = "arrays", epochs: int = 2,
                metrics: dict | None = None) -> Message:
    """The user's own train function: its model, its loop, its loader (wrapped or not)."""
    model = UserNet()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader, _ = _batches(int(context.node_config["partition-id"]))
    if audited:
        loader = AuditedLoader(loader)
    opt = torch.optim.SGD(model.parameters(), lr=float(msg.content["config"]["lr"]))
    model.train()
    for _ in range(epochs):  # each sample is recorded once
        for batch in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(batch["img"]), batch["label"]).backward()
            opt.step()
    return Message(RecordDict({arrays_key: ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": 4, "train_loss": 1.0} if metrics is None
                                                       else metrics)}), reply_to=msg)


def _play_round(strategy: AuditStrategy, grid: Grid, rnd: int, *, mod: bool = True, **train_kwargs):
    messages = list(strategy.configure_train(rnd, ArrayRecord(UserNet().state_dict()),
                                             ConfigRecord({"lr": 0.05}), grid))
    replies = []
    for m in messages:
        pid = strategy.grid_clients[m.metadata.dst_node_id]
        ctx = Context(run_id=1, node_id=m.metadata.dst_node_id, node_config={"partition-id": pid},
                      state=RecordDict(), run_config={})
        train = lambda msg, c: _user_train(msg, c, audited=mod, **train_kwargs)  # noqa: E731
        replies.append(audit_mod(m, ctx, train) if mod else train(m, ctx))
    return strategy.aggregate_train(rnd, replies)


def _strategy(tmp_path, **kwargs) -> AuditStrategy:
    inner = RecordingFedAvg(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)
    strategy = AuditStrategy(
        inner, model=UserNet(), protocol=TrainingProtocol(local_epochs=2, batch_size=2, config_keys={"lr": "lr"}),
        attacks={"idlg": {"iterations": 2, "max_iter": 1},
                 "invgrad": {"iterations": 2, "restarts": 1, "candidates": 1}},
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), out_dir=tmp_path / "run", dispatcher=LocalDispatcher(1),
        **kwargs)
    strategy.grid_clients = {101: 0, 202: 1}
    return strategy


def test_user_model_with_batchnorm_dropout_pooling_and_own_layer_is_audited_against_its_own_images(
        tmp_path, flower_task):
    strategy = _strategy(tmp_path)
    assert strategy.auditor.plan.model.in_shape == (3, 8, 8) and strategy.auditor.plan.model.num_classes == 3
    grid = FakeGrid([101, 202])
    with strategy.auditor.session():
        arrays, _ = _play_round(strategy, grid, 1)
        assert arrays is not None
        strategy.evaluate_fn(None)(1, arrays)
    # the user's strategy never saw the audit-only records
    assert strategy.strategy.seen == [{"arrays", "metrics"}]
    rows = list(csv.DictReader((tmp_path / "run" / "leakage.csv").open()))
    assert sorted((r["client"], r["attack"]) for r in rows) == [("0", "idlg"), ("0", "invgrad"), ("1", "idlg"),
                                                                 ("1", "invgrad")]
    for r in rows:
        assert r["status"] == "ok" and r["unscored"] == "", r
        assert r["num_images"] == "4"  # two epochs of two batches: four distinct samples
        assert float(r["psnr"]) > 0 and r["label_acc"] != ""
    # scored against the client's own images: the gallery's top row is the loader's pixels
    from PIL import Image

    _, x = _batches(0)
    grid_png = np.asarray(Image.open(tmp_path / "run" / "images" / "r001_c0_idlg.png")).astype(float) / 255
    from fedattack.report.images import PAD, scale_for

    s = scale_for(8, 8)
    top = grid_png[PAD:PAD + 8 * s:s, PAD:PAD + 8 * s:s]  # the first 8x8 image of the top row
    assert any(np.abs(top - ((xi.permute(1, 2, 0).numpy() + 1) / 2)).max() < 1 / 255 + 1e-6 for xi in x)
    rounds = list(csv.DictReader((tmp_path / "run" / "rounds.csv").open()))
    assert [(r["round"], r["replies"], r["audited_clients"], r["jobs"]) for r in rounds] == [("1", "2", "2", "4")]
    assert (tmp_path / "run" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "reconstructions").iterdir())[0] == "r001_c0_idlg.npz"
    # the user's model trains BatchNorm: the report says its scores are a lower bound
    assert "read these scores as a lower bound" in (tmp_path / "run" / "report.html").read_text()


def test_without_the_client_record_the_audit_runs_unscored_and_says_why(tmp_path, flower_task):
    strategy = _strategy(tmp_path)
    with strategy.auditor.session():
        arrays, _ = _play_round(strategy, FakeGrid([101, 202]), 1, mod=False)
        strategy.evaluate_fn(None)(1, arrays)
    rows = list(csv.DictReader((tmp_path / "run" / "leakage.csv").open()))
    assert len(rows) == 4
    for r in rows:
        assert r["status"] == "ok" and r["psnr"] == "" and r["label_acc"] == ""
        assert "no audit record" in r["unscored"]
    npz = np.load(tmp_path / "run" / "reconstructions" / f"r001_c{rows[0]['client']}_{rows[0]['attack']}.npz")
    assert npz["images"].shape[1:] == (3, 8, 8) and len(npz["labels"]) == npz["images"].shape[0]
    assert 0 <= npz["images"].min() and npz["images"].max() <= 1
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Scores unavailable" in html and "no audit record" in html
    assert "No client update was scored: the attacks ran without the private images" in html  # not "no attack produced"
    assert "No attack recovered" not in html and ">labels only<" not in html and "top: private image" not in html
    assert html.count("reconstructed, unscored") == 4 and ">0 of 2<" not in html  # no measured "0 of 2 leaked"
    assert rows[0]["num_images"] == str(len(npz["images"])) != "0"  # the images its attack reconstructed
    from fedattack.report.store import load_run

    assert all(not r.scored for r in load_run(tmp_path / "run").results)  # the reason survives the CSV
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # the protocol the attacks replayed
    assert summary["protocol"] == "2 local epochs of batch 2 at lr from the train config's 'lr'"


def test_a_reply_without_the_strategys_arrays_key_is_one_line_and_nothing_is_written(tmp_path, flower_task):
    strategy = _strategy(tmp_path)
    with pytest.raises(FedattackError, match=r"^arrayrecord_key: a train reply \(node \d+\) has no ArrayRecord "
                                             r"'arrays' \(its ArrayRecords: weights\)") as exc:
        with strategy.auditor.session():
            _play_round(strategy, FakeGrid([101, 202]), 1, arrays_key="weights")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_bad_arguments_are_one_line_naming_the_argument(tmp_path):
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    protocol = TrainingProtocol(lr=0.1, local_epochs=1, batch_size=2)
    with pytest.raises(ConfigError, match=r"^strategy: FedAvg is a legacy flwr.server.strategy Strategy .*the "
                                          r"Message API \(a flwr.serverapp.strategy Strategy\) is needed"):
        AuditStrategy(LegacyFedAvg(), model=UserNet(), protocol=protocol, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^attacks: unknown attack 'nope'"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, attacks=["nope"], out_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match=r"^mean: expected 1 or 3 values"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, mean=(0.5, 0.5), out_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^std: give mean and std together"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, mean=(0.5,), out_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^input_shape: the model does not take inputs of shape \(3, 12, 12\)"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, input_shape=(3, 12, 12), out_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match=r"^calibration_data: calibrate=True needs the server's own data"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, calibrate=True, out_dir=tmp_path / "f")
    with pytest.raises(ConfigError, match=r"^calibration_data: labels must be class ids 0 to 2 .*got 0 to 9"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, calibrate=True, out_dir=tmp_path / "f",
                      calibration_data=(torch.zeros(10, 3, 8, 8), torch.arange(10)))
    for images, says in ((torch.zeros(0, 3, 8, 8), "holds no images"),
                         (torch.full((4, 3, 8, 8), float("nan")), "images hold NaN or infinite values"),
                         (torch.rand(4, 3, 8, 8) * 255, r"images are not model inputs of this normalization: as "
                                                        r"pixels \(x \* std \+ mean\) they run from .* to 2..\.?\d*, not 0 to 1")):
        with pytest.raises(ConfigError, match=f"^calibration_data: {says}"):
            AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, calibrate=True, out_dir=tmp_path / "f",
                          calibration_data=(images, torch.zeros(len(images), dtype=torch.long)))
    with pytest.raises(ConfigError, match=r'^server_mode: rtf needs a malicious server .*server_mode="malicious"'):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, attacks=["rtf"], out_dir=tmp_path / "g")
    with pytest.raises(ConfigError, match=r"^server_mode: unknown value 'evil'; allowed: honest, malicious$"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, server_mode="evil", out_dir=tmp_path / "h")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep").write_text("")
    with pytest.raises(ConfigError, match=r"^out_dir: .* exists and is not empty"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, out_dir=tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


class TupleNet(UserNet):
    def forward(self, x):
        return super().forward(x), None


@pytest.mark.parametrize("kwargs, says", [
    (dict(lr="0.1"), r"^protocol.lr: expected a number, got '0.1'$"),
    (dict(lr=True), r"^protocol.lr: expected a number"),
    (dict(lr=float("nan")), r"^protocol.lr: must be a finite number"),
    (dict(batch_size=1.5), r"^protocol.batch_size: expected an integer, got 1.5$"),
    (dict(nesterov="no"), r"^protocol.nesterov: expected True or False"),
    (dict(optimizer="adam", momentum=0.9), r"^protocol.momentum: is sgd's; adam keeps its own moment estimates"),
    (dict(config_keys=["lr"]), r"^protocol.config_keys: expected a mapping"),
    (dict(defenses=["gaussian"]), r"^protocol.defenses: expected \(defense name, \{parameter: value\}\) pairs"),
    (dict(defenses=[("nodefense", {})]), r"^protocol.defenses: unknown defense 'nodefense'; allowed: .*gaussian"),
    (dict(defenses=[("gaussian", {"sigmaa": 1})]), r"^protocol.defenses: gaussian.sigmaa: unknown key; allowed: sigma$"),
    (dict(defenses=[("gaussian", {"sigma": -1})]), r"^protocol.defenses: gaussian.sigma: must be >= 0"),
])
def test_a_training_protocol_of_the_wrong_type_or_defense_is_one_line(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        TrainingProtocol(**{"lr": 0.1, "local_steps": 1, "batch_size": 2, **kwargs})
    assert TrainingProtocol(lr=1, local_steps=2.0, batch_size=4, defenses=[("gaussian", {"sigma": 0.1})]).lr == 1
    # a defense's own section is checked, not a whole config's rules between sections: the app's
    # rounds may hold more than fedattack's default 2 clients, as SecAgg+'s threshold of 5 needs
    assert TrainingProtocol(lr=0.1, local_steps=1, batch_size=2,
                            defenses=[("secagg", {"reconstruction_threshold": 5})]).defenses


def test_a_model_whose_output_does_not_fit_names_the_output_not_the_input(tmp_path):
    protocol = TrainingProtocol(lr=0.1, local_epochs=1, batch_size=2)
    with pytest.raises(ConfigError, match=r"^num_classes: on inputs of shape \(3, \d+, \d+\) it returns \(2, 3\), "
                                          r"not \(batch, 10\) logits"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, num_classes=10, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^model: .* it returns tuple, not \(batch, 3\) logits; forward must return "
                                          r"one tensor"):
        AuditStrategy(FedAvg(), model=TupleNet(), protocol=protocol, out_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match=r"^model: the factory returned str, not a torch.nn.Module$"):
        AuditStrategy(FedAvg(), model=lambda: "x", protocol=protocol, out_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^model: building it raised ZeroDivisionError: division by zero$"):
        AuditStrategy(FedAvg(), model=lambda: 1 / 0, protocol=protocol, out_dir=tmp_path / "c")
    # arguments of the wrong kind: one line naming the argument, not an error from deep inside
    from flwr.serverapp.strategy import FedAvg as MessageFedAvg

    afile = tmp_path.parent / f"{tmp_path.name}-afile"
    afile.write_text("x")
    for kwargs, says in [(dict(strategy=MessageFedAvg), r"^strategy: got the class .*FedAvg; pass the strategy "
                                                        r"itself, e.g. FedAvg\(\)$"),
                         (dict(attacks=None), r"^attacks: expected a list of attacks or a mapping"),
                         (dict(attacks=5), r"^attacks: expected a list of attacks or a mapping"),
                         (dict(mean="abc", std=(1.0,)), r"^mean: expected numbers \(one per input channel"),
                         (dict(mean=(float("nan"),), std=(1.0,)), r"^mean: expected finite numbers"),
                         (dict(input_shape="abc"), r"^input_shape: expected \(channels, height, width\), got 'abc'$"),
                         (dict(out_dir=5), r"^out_dir: expected a path \(str or pathlib.Path\), got an int$"),
                         (dict(out_dir=afile / "sub"), r"^out_dir: cannot create .*afile is not a directory$"),
                         (dict(on_result=5), r"^on_result: expected a function or None, got an int$"),
                         (dict(dispatcher="ray"), r"^dispatcher: expected a fedattack Dispatcher or None")]:
        args = dict(strategy=FedAvg(), model=UserNet(), protocol=protocol, out_dir=tmp_path / "e") | kwargs
        with pytest.raises(ConfigError, match=says):
            AuditStrategy(args.pop("strategy"), **args)
    for attacks, got in [([lambda obs: None], "the function"), ({3: None}, "an int"), ([None], "a NoneType")]:
        with pytest.raises(ConfigError, match=rf"^attacks: got {got}.*; allowed: registered attack names, "
                                              "'module:attr' paths, or what @fedattack.attacks.register_attack "
                                              "returned$"):
            AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, attacks=attacks, out_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^attacks: 'idlg' is listed twice"):
        AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, attacks=["idlg", "idlg"], out_dir=tmp_path / "d")
    # named as AuditStrategy's arguments are, not as fedattack's config keys
    for kwargs, says in [(dict(labels="nosuch:thing"), r"^labels: cannot import 'nosuch:thing'"),
                         (dict(every="2"), r"^every: expected an integer, got '2'$"),
                         (dict(success_margin=-1), r"^success_margin: must be >= 0"),
                         (dict(attacks={"invgrad": {"iters": 3}}),
                          r"^attacks\['invgrad'\]\.iters: unknown key; allowed: "),
                         (dict(attacks={"tests.plugins.failing:boom": {"x": 1}}),
                          r"^attacks\['tests.plugins.failing:boom'\]\.x: unknown key")]:
        with pytest.raises(ConfigError, match=says):
            AuditStrategy(FedAvg(), model=UserNet(), protocol=protocol, out_dir=tmp_path / "e", **kwargs)
    assert not any(tmp_path.iterdir())


def test_training_protocol_fixed_values_train_config_keys_and_step_counts():
    p = TrainingProtocol(local_epochs=2, batch_size=32, momentum=0.9, config_keys={"lr": "learning-rate"})
    obs = p.protocol({"learning-rate": 0.1, "server-round": 1}, num_examples=70)
    assert (obs.lr, obs.local_epochs, obs.local_steps, obs.batch_size, obs.num_examples, obs.momentum) == \
        (0.1, 2, 2 * 3, 32, 70, 0.9)
    steps = TrainingProtocol(lr=0.01, local_steps=5, batch_size=8, optimizer="adam", weight_decay=1e-4)
    assert steps.protocol(None, 100).local_steps == 5 and steps.protocol(None, 100).optimizer == "adam"
    with pytest.raises(ConfigError, match=r"^protocol.config_keys.lr: the train ConfigRecord has no 'learning-rate' "
                                          r"\(it has: server-round\)$"):
        p.check({"server-round": 1})
    # a key the record lacks stops the round also where the field has a value of its own
    keyed = TrainingProtocol(lr=0.1, local_epochs=1, batch_size=8, config_keys={"momentum": "mom", "optimizer": "opt"})
    with pytest.raises(ConfigError, match=r"^protocol.config_keys.momentum: the train ConfigRecord has no 'mom' "
                                          r"\(it has: lr\)$"):
        keyed.check({"lr": 0.1})
    assert keyed.protocol({"mom": 0.9, "opt": "sgd"}, 8).momentum == 0.9
    # a value is taken as it is or refused, never bent to fit
    for field, key, raw, allowed in [("local_epochs", "e", 2.7, "an integer"),
                                     ("nesterov", "n", "false", "True or False"),
                                     ("lr", "lr", "fast", "a number"), ("optimizer", "o", 3, "a string")]:
        bent = TrainingProtocol(lr=0.1, local_epochs=1, batch_size=8, config_keys={field: key})
        with pytest.raises(ConfigError, match=rf"^protocol.{field}: the train config's '{key}' is {raw!r}, "
                                              rf"not {allowed}$"):
            bent.check({key: raw})
    assert TrainingProtocol(lr=0.1, local_epochs=1, batch_size=8, config_keys={"local_epochs": "e"}).protocol(
        {"e": 3.0}, 8).local_epochs == 3
    with pytest.raises(TypeError):
        TrainingProtocol(0.1, 1, None, 8)  # keyword arguments only: the order is easy to get wrong
    with pytest.raises(ConfigError, match=r"^protocol.lr: not given"):
        TrainingProtocol(local_epochs=1, batch_size=2)
    with pytest.raises(ConfigError, match=r"^protocol.optimizer: unknown value 'rmsprop'; allowed: sgd, adam$"):
        TrainingProtocol(lr=0.1, local_epochs=1, batch_size=2, optimizer="rmsprop")
    with pytest.raises(ConfigError, match=r"^protocol.local_epochs: set local_epochs or local_steps"):
        TrainingProtocol(lr=0.1, batch_size=2)


def test_a_user_model_spec_pickles_builds_and_is_hashable():
    spec = user_model_spec(UserNet())
    assert spec.in_shape == (3, 8, 8) and spec.num_classes == 3 and spec.name.endswith(":UserNet")
    again = pickle.loads(cloudpickle.dumps(spec))
    assert again == spec and hash(again) == hash(spec)
    a, b = build_model(again), build_model(again)
    assert a is not b and isinstance(a, UserNet)
    factory = user_model_spec(UserNet, num_classes=3, in_shape=(3, 8, 8))
    assert isinstance(build_model(factory, seed=0), UserNet)
    assert {spec: 1}[again] == 1


def test_seeded_sampling_picks_the_same_clients_whatever_the_node_ids():
    strategy = FedAvg(fraction_train=0.5, min_train_nodes=2, min_available_nodes=2)

    def sampled(seed: int) -> list[list[int]]:
        ids = random.Random(seed).sample(range(10**6), 8)  # fresh random node ids, as every simulation draws
        sampling = SeededSampling(seed=7)
        for pid, node in enumerate(ids):
            sampling.learn(node, pid)
        grid = FakeGrid(ids)
        out = []
        for rnd in (1, 2, 3):
            with sampling.seeded(grid, rnd, "train") as view:
                nodes, _ = sample_nodes(view, strategy.min_available_nodes, 4)  # what FedAvg calls
            out.append(sorted(sampling.clients[n] for n in nodes))
        return out

    state = random.getstate()
    first, second = sampled(1), sampled(2)
    assert first == second and len({tuple(r) for r in first}) > 1
    assert random.getstate() == state  # Python's generator is restored


class AnsweringGrid(FakeGrid):
    """Nodes that answer an identification through `audit_mod` (partition id = position), except
    `late` ones, whose first answer misses the wait (a client process still starting), and
    `plain` ones, which run no audit_mod (their train function fails)."""

    def __init__(self, node_ids, late=(), plain=()):
        super().__init__(node_ids)
        self.late, self.plain, self.asked = set(late), set(plain), []

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            self.asked.append(node)
            if node in self.late:
                self.late.discard(node)
                continue
            if node in self.plain:
                replies.append(Message(Error(code=0, reason="no arrays"), reply_to=m))
                continue
            ctx = Context(run_id=1, node_id=node, node_config={"partition-id": self.node_ids.index(node)},
                          state=RecordDict(), run_config={})
            replies.append(audit_mod(m, ctx, lambda msg, c: pytest.fail("identification reached train")))
        return replies


def test_seeded_sampling_asks_late_nodes_again_before_sampling(flower_task):
    strategy = FedAvg(fraction_train=0.5, min_train_nodes=2, min_available_nodes=2)

    def sampled(grid: AnsweringGrid) -> list[list[int]]:
        sampling = SeededSampling(seed=7)
        sampling.identify(grid, min_nodes=len(grid.node_ids), timeout=5)
        out = []
        for rnd in (1, 2, 3):
            with sampling.seeded(grid, rnd, "train") as view:
                nodes, _ = sample_nodes(view, strategy.min_available_nodes, 4)
            out.append(sorted(grid.node_ids.index(n) for n in nodes))
        return out

    ids = random.Random(3).sample(range(10**6), 8)
    prompt = sampled(AnsweringGrid(ids))
    late = AnsweringGrid(ids, late=ids[:3])
    assert sampled(late) == prompt  # the late nodes were asked again before round 1's sample
    assert sorted(late.asked) == sorted(ids + ids[:3])
    plain = AnsweringGrid(ids, plain=ids[5:6])
    sampled(plain)
    assert plain.asked.count(ids[5]) == 1  # a node without audit_mod is asked once, not every round
    mute = AnsweringGrid(ids)
    mute.send_and_receive = lambda messages, timeout=None: [  # node 0 never answers
        r for r in AnsweringGrid.send_and_receive(mute, messages, timeout=timeout) if r.metadata.src_node_id != ids[0]]
    sampled(mute)
    assert mute.asked.count(ids[0]) == 2  # a node that never answers costs two waits, not one per round


@pytest.mark.parametrize("path, field", [("os:system", "model.name"), ("subprocess:run", "model.name")])
def test_an_import_path_of_the_wrong_kind_is_refused_before_it_is_called(capsys, tmp_path, path, field):
    from fedattack.cli import main

    out = tmp_path / "run"
    assert main(["run", f"model.name={path}", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedattack: error: {field}: '{path}' is ") and "\n" not in err, err
    assert not out.exists()


def test_a_legacy_strategy_is_one_line_naming_the_message_api(capsys, tmp_path):
    from fedattack.cli import main

    out = tmp_path / "run"
    assert main(["run", "fl.strategy=flwr.server.strategy:FedAvg", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedattack: error: fl.strategy: 'flwr.server.strategy:FedAvg' is a legacy "
                          "flwr.server.strategy Strategy") and "flwr.serverapp.strategy" in err and "\n" not in err
    assert not out.exists()


def test_clients_take_only_numbers_from_a_message(small_cfg):
    from fedattack.client.app import client_view, with_protocol

    cfg = small_cfg("client.defenses=[gaussian]", "client.lr=0.01")
    got = with_protocol(cfg, ConfigRecord({"lr": 0.5, "batch-size": 4, "gaussian.sigma": 0.3, "model.name": "os:system",
                                           "fedattack": '{"model": {"name": "os:system"}}', "nope.x": 1.0,
                                           "gaussian.seed_path": "mypkg:thing"}))
    assert (got.client.lr, got.client.batch_size, got.defense("gaussian").sigma) == (0.5, 4, 0.3)
    assert got.model.name == cfg.model.name and cfg.client.lr == 0.01  # nothing else, and a copy
    view = client_view({"audit": {"attacks": ["idlg", "mypkg.attacks:quick"]}, "mypkg.attacks:quick": {"k": 1},
                        "fl": {"strategy": "mypkg:MyStrategy", "strategy_args": {"x": 1}}, "idlg": {"max_iter": 1}})
    assert view["audit"] == {"attacks": ["idlg"]} and "mypkg.attacks:quick" not in view
    assert view["fl"] == {"strategy": "fedavg"} and view["idlg"] == {"max_iter": 1}


@pytest.mark.parametrize("sent, says", [
    ({"lr": float("nan")}, r"^client.lr: the server sent nan; expected a finite number$"),
    ({"batch-size": 2.7}, r"^client.batch_size: the server sent 2.7; expected a whole number$"),
    ({"batch-size": float("nan")}, r"^client.batch_size: the server sent nan"),
    ({"local-steps": -1}, r"^client.local_steps: the server sent a value this client's config refuses: must be >= 0"),
    ({"proximal-mu": -1.0}, r"^client.proximal_mu: the server sent a value this client's config refuses"),
    ({"gaussian.sigma": -1.0}, r"^gaussian.sigma: the server sent a value this client's config refuses"),
    ({"clip.bound": float("nan")}, r"^clip.bound: the server sent nan; expected a finite number$"),
])
def test_numbers_a_message_sends_are_checked_as_the_clients_own_config_is(small_cfg, sent, says):
    """A server could set values the client's own config refuses (NaN, negative noise, a
    fractional batch size truncated without a word)."""
    from fedattack.client.app import with_protocol

    cfg = small_cfg("client.defenses=[gaussian,clip]")
    with pytest.raises(ConfigError, match=says):
        with_protocol(cfg, ConfigRecord(sent))


@pytest.mark.parametrize("seed", [None, 7])
def test_the_report_says_whether_an_apps_audit_was_seeded(tmp_path, seed):
    from fedattack.report.store import RunStore
    from fedattack.results import RoundResult

    strategy = AuditStrategy(FedAvg(), model=UserNet(), protocol=TrainingProtocol(lr=0.1, local_steps=1, batch_size=1),
                             attacks=["idlg"], seed=seed, out_dir=tmp_path / "run")
    store = RunStore(tmp_path / "run", cfg=strategy.auditor.plan.record)
    store.add_round(RoundResult(round=1))
    store.finish()
    html = (tmp_path / "run" / "report.html").read_text()
    unseeded = "no seed: the strategy's own client sampling, attacks initialized from seed 0."
    assert (unseeded in html) == (seed is None)
    assert ("; seed 7." in html) == (seed == 7)


def test_an_apps_run_under_secagg_records_that_its_server_saw_sums(tmp_path):
    import yaml

    strategy = _strategy(tmp_path)
    strategy.aggregate_only = True  # what the SecAgg+ bridge sets before the session
    notes: list[str] = []
    strategy.auditor.on_note = notes.append
    with strategy.auditor.session(scope="aggregate"):
        strategy.auditor.open_store()
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["server"]["sees"] == "sums"
    assert strategy.auditor.store.header.budgets == ()  # idlg and invgrad need one client's update: no budget
    assert notes and "idlg, invgrad do not run" in notes[0] and " to attacks; cpa needs " in notes[0]
    # its rows name the defense as its report does (they said "none")
    assert strategy.auditor.defense == strategy.auditor.store.header.defense == "SecAgg+"


def test_a_model_unlike_the_clients_stops_the_round_before_they_train_naming_the_parameter(tmp_path):
    strategy = _strategy(tmp_path)
    clients = UserNet()
    clients.head = nn.Linear(4 * 4 * 4, 10)  # the clients' model has ten classes, the audit's three
    with pytest.raises(FedattackError, match=r"^model: the exchanged arrays hold 'head.weight' of shape \(10, 64\), "
                                             r"the audit's model has \(3, 64\)"):
        strategy.configure_train(1, ArrayRecord(clients.state_dict()), ConfigRecord({"lr": 0.05}), FakeGrid([101, 202]))
    assert not (tmp_path / "run").exists()
    # a parameter the audit's model has and the clients' lacks
    with pytest.raises(FedattackError, match=r"^model: the exchanged arrays lack the model's parameter 'head.weight'"):
        lacking = {k: v for k, v in UserNet().state_dict().items() if k != "head.weight"}
        strategy.configure_train(1, ArrayRecord(lacking), ConfigRecord({"lr": 0.05}), FakeGrid([101, 202]))


def test_the_public_api_is_what_a_star_import_brings():
    import subprocess
    import sys

    code = "from fedattack import *; print(AuditStrategy.__name__, TrainingProtocol.__name__, audit_mod.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AuditStrategy", "TrainingProtocol", "audit_mod"]


def test_an_audited_loader_says_which_of_its_keys_the_batches_lack():
    from fedattack.client.record import SampleRecording, _RECORDING

    batches = [{"img": torch.zeros(2, 3, 8, 8), "label": torch.tensor([0, 1])}]
    for kwargs, note in [({}, ""), ({"image_key": "pixels"}, "AuditedLoader: image_key='pixels' is not a key of the "
                                                              "batches (they have ['img', 'label'])"),
                         ({"label_key": "y"}, "AuditedLoader: label_key='y' is not a key of the batches")]:
        rec = SampleRecording()
        token = _RECORDING.set(rec)
        try:
            assert len(list(AuditedLoader(batches, **kwargs))) == 1  # the training loop sees its batches anyway
        finally:
            _RECORDING.reset(token)
        assert rec.note.startswith(note) and len(rec) == (2 if not note else 0)


def test_fedprox_mu_reaches_the_clients_training_and_the_audits_replay():
    from fedattack import config as fconfig
    from fedattack.client.app import with_protocol

    cfg = fconfig.load(None, ["fl.strategy=fedprox", "fl.strategy_args={proximal_mu: 0.3}"])
    # Flower's FedProx sends its mu as "proximal-mu"; the client trains with it
    assert with_protocol(cfg, ConfigRecord({"proximal-mu": 0.3})).client.proximal_mu == 0.3
    protocol = TrainingProtocol.of_config(cfg, from_train_config=True)
    assert protocol.config_keys["proximal_mu"] == "proximal-mu"
    assert protocol.protocol({"lr": 0.1, "batch-size": 2, "momentum": 0.0, "local-steps": 2, "proximal-mu": 0.3},
                             4).proximal_mu == 0.3
    assert TrainingProtocol.of_config(fconfig.load(None, [])).protocol(None, 4).proximal_mu == 0.0


def test_the_success_margin_is_the_apps_to_set(tmp_path):
    strategy = _strategy(tmp_path, success_margin=2.0)
    assert strategy.auditor.plan.options.success_margin == 2.0


def test_an_attack_object_from_register_attack_is_audited_as_the_module_path_workers_import():
    from fedattack.server.audit import _audit_section
    from tests.plugins.failing import boom

    _, attacks = _audit_section([boom, "idlg"], seed=0)
    assert list(attacks) == ["tests.plugins.failing:boom", "idlg"]
    _, attacks = _audit_section({boom: {}}, seed=0)
    assert list(attacks) == ["tests.plugins.failing:boom"]
    from fedattack.attacks.invgrad import invgrad

    assert list(_audit_section([invgrad], seed=0)[1]) == ["invgrad"]  # a built-in one by its name
    def mine(obs, params, ctx):
        return None

    mine.__module__ = "__main__"  # as if defined in the script being run
    script = AttackSpec("mine", mine, dict, "test")
    with pytest.raises(ConfigError, match="^attacks: the attack object 'mine' is defined in the script being run"):
        _audit_section([script], seed=0)


def test_the_example_attack_on_the_engine_lowers_its_mismatch(monkeypatch):
    from pathlib import Path

    from fedattack.attacks import AttackContext
    from fedattack.testing.cases import observed_update

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    from mypkg.attacks import MatchedParams, matched

    obs, truth = observed_update("seed=0", "model.name=quickstart-cnn", "model.activation=relu", "client.local_steps=2",
                                 "client.batch_size=2", indices=[3, 17, 42, 99])
    ctx = AttackContext(seed=0)
    short = matched(obs, MatchedParams(iterations=1), ctx)
    longer = matched(obs, MatchedParams(iterations=40), ctx)
    assert longer.images.shape == truth.images.shape and torch.equal(longer.labels.sort().values,
                                                                      truth.labels.sort().values)
    assert longer.info["mismatch"] < 0.5 * short.info["mismatch"]


def test_the_wrapped_strategy_aggregates_replies_in_the_order_they_were_sent_not_as_they_arrived():
    """Three float updates summed in another order differ in the last bits, which the attacks of
    later rounds magnify: one seed's runs differed from round 2 on."""
    from types import SimpleNamespace

    from fedattack.server.audit import in_sent_order

    def reply(node):
        return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node))

    sent = {30: "m", 10: "m", 20: "m"}  # the seeded sampling's order
    for arrived in ([10, 20, 30], [20, 30, 10], [30, 10, 20, 99]):
        assert [r.metadata.src_node_id for r in in_sent_order([reply(n) for n in arrived], sent)] == \
            [30, 10, 20] + ([99] if 99 in arrived else [])
    a, b, c = (torch.randn(1000, generator=torch.Generator().manual_seed(i)) * 10 ** i for i in range(3))
    assert not torch.equal((a + b) + c, (c + a) + b)  # why the order matters


@pytest.mark.parametrize("case", ["as configured", "three epochs", "no example count"])
def test_a_client_that_trains_otherwise_than_the_protocol_says_is_named(tmp_path, caplog, flower_task, case):
    """The protocol is the server's own (2 epochs of batch 2 over 4 examples: 4 steps); the
    train function is the user's. What it did that the replay cannot follow is one warning."""
    import logging

    kwargs = {"as configured": {}, "three epochs": {"epochs": 3},
              "no example count": {"metrics": {"train_loss": 1.0}}}[case]
    strategy = _strategy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flwr"), strategy.auditor.session():
        try:
            _play_round(strategy, FakeGrid([101, 202]), 1, **kwargs)
        except Exception:  # noqa: BLE001 - Flower's FedAvg refuses replies without their weight
            assert case == "no example count"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fedattack:")]
    drew = [m for m in said if "train function drew" in m]
    missing = [m for m in said if "carry no 'num-examples'" in m]
    if case == "as configured":
        assert drew == [] and missing == []
    elif case == "three epochs":
        assert len(drew) == 1 and missing == []
        assert "drew 6 batches where the audit replays 4 local steps (2 epochs of batch 2 over 4 examples)" in drew[0]
    else:
        assert len(missing) == 1 and "replays 1 step per epoch" in missing[0]


def test_jobs_abandoned_when_ray_goes_away_under_an_app_mark_its_run_interrupted(tmp_path, flower_task, monkeypatch):
    """An app's process stopped from outside ends Flower's simulation and Ray with it: the
    dispatcher abandons the jobs still pending, and the run must not read as complete."""
    import json

    strategy = _strategy(tmp_path)
    dispatcher = strategy.auditor.dispatcher

    def gone(self):  # what RayDispatcher.drain does once Ray is no longer up
        self.abandon()
        return iter(())

    monkeypatch.setattr(type(dispatcher), "drain", gone)
    monkeypatch.setattr(type(dispatcher), "poll", lambda self: [])  # nothing finishes before the stop
    with strategy.auditor.session():
        _play_round(strategy, FakeGrid([101, 202]), 1)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"]["abandoned_jobs"] == 4  # 2 clients x (idlg, invgrad)
    assert "Ray stopped" in summary["interrupted"]["reason"]
    assert ("This run was interrupted</b> (Ray stopped before every attack job had finished) after 0 rounds."
            in (tmp_path / "run" / "report.html").read_text())  # an app's run names no round count: not "of 0"
    monkeypatch.undo()  # Ray back: a later session of the same process starts clean
    strategy2 = _strategy(tmp_path / "second")  # a later session of the same process starts clean
    with strategy2.auditor.session():
        _play_round(strategy2, FakeGrid([101, 202]), 1)
    assert json.loads((tmp_path / "second" / "run" / "summary.json").read_text())["interrupted"] is None


def test_a_sum_that_no_configured_attack_runs_on_audits_no_client(tmp_path):
    from fedattack.results import RoundStats

    strategy = _strategy(tmp_path)  # idlg and invgrad: each needs one client's update
    stats = RoundStats(1, 0.0)
    strategy.auditor._observe_aggregate(1, stats, {}, [object(), object()], "arrays", "config", "num-examples")
    assert stats.scope == "aggregate" and stats.audited_clients == 0 and stats.jobs == 0  # it said 2 clients audited


def test_an_app_waiting_for_its_last_jobs_logs_that_it_still_waits(tmp_path, flower_task, monkeypatch, caplog):
    import logging
    import time

    strategy = _strategy(tmp_path)
    strategy.auditor.heartbeat = 0.05
    dispatcher = strategy.auditor.dispatcher
    monkeypatch.setattr(type(dispatcher), "poll", lambda self: [])  # the jobs run long
    monkeypatch.setattr(type(dispatcher), "drain", lambda self: iter(time.sleep(0.3) or ()))
    caplog.set_level(logging.INFO, logger="flwr")
    with strategy.auditor.session():
        _play_round(strategy, FakeGrid([101, 202]), 1)
    beats = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert beats and beats[0] == "fedattack: still waiting for 4 attack jobs (0 done) ..."
    caplog.clear()
    strategy = _strategy(tmp_path / "cli")
    strategy.auditor.heartbeat = 0  # the command line's status line says it instead
    with strategy.auditor.session():
        _play_round(strategy, FakeGrid([101, 202]), 1)
    assert not [r for r in caplog.records if "still waiting" in r.getMessage()]
