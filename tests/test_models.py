"""Models: architectures by name, `model.width` where it means something, extensions."""

from __future__ import annotations

import pytest
import torch

from fedattack import config as fconfig
from fedattack.errors import ConfigError
from fedattack.experiment import build
from fedattack.models import build_model
from fedattack.threat import ModelSpec


def _spec(name: str, width: int | None = None, **kw) -> ModelSpec:
    return ModelSpec(name=name, activation="relu", num_classes=2, in_shape=(1, 16, 16), width=width, **kw)


def _conv_channels(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_width_sets_the_channels_of_lenet_and_convnet_and_the_units_of_mlp():
    assert _conv_channels(build_model(_spec("lenet"))) == [12, 12, 12]  # DLG's LeNet by default
    assert _conv_channels(build_model(_spec("lenet", 4))) == [4, 4, 4]
    assert _conv_channels(build_model(_spec("convnet", 8))) == [8, 16, 16, 32, 32]
    mlp = build_model(_spec("mlp", 16))
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [16, 16, 2]


def test_width_of_a_model_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model\.width: model 'resnet18' has no width parameter"):
        fconfig.load(None, ["audit.attacks=[]", "model.name=resnet18", "model.width=32"])
    with pytest.raises(ConfigError, match=r"^model\.width: must be > 0"):
        fconfig.load(None, ["audit.attacks=[]", "model.width=0"])
    cfg = fconfig.load(None, ["audit.attacks=[]", "model.name=lenet", "model.width=6", "data.image_size=16"])
    assert _conv_channels(build(cfg).initial_model()) == [6, 6, 6]


def test_the_same_seed_builds_the_same_weights():
    a, b = build_model(_spec("lenet"), seed=3), build_model(_spec("lenet"), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    uniform = build_model(_spec("lenet", init="uniform", init_scale=0.5), seed=3)
    assert all(p.abs().max() <= 0.5 for p in uniform.parameters())


@pytest.mark.parametrize("in_shape", [(3, 32, 32), (3, 300, 300)])  # traced on the CPU, on the meta device
def test_the_footprint_counts_the_weights_and_leaves_the_random_state_alone(in_shape):
    from fedattack.limits import REAL_TRACE_VALUES, footprint

    spec = ModelSpec(name="lenet", activation="sigmoid", num_classes=2, in_shape=in_shape)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    fp = footprint(spec)
    assert torch.equal(torch.rand(3), expected)  # the run's draws come out as without the check
    model = build_model(spec)
    assert fp.params == sum(p.numel() * 4 for p in model.parameters())
    assert fp.per_sample > 4 * 3 * in_shape[1] * in_shape[2]  # the image and every layer's output
    assert (3 * in_shape[1] * in_shape[2] <= REAL_TRACE_VALUES) == (in_shape == (3, 32, 32))


def test_extensions_wrap_the_model_by_name():
    spec = _spec("lenet", extensions=(("precode", '{"size": 8}'), ("imprint", '{"num_bins": 4}')))
    model = build_model(spec, seed=0)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["imprint.linear0.weight", "imprint.linear0.bias"]
    assert "model.precode.encoder.weight" in names and names[-1] == "model.fc.bias"  # the head stays last
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 2)


def test_batch_norm_layers_are_found_in_the_models_that_have_them():
    from fedattack.models import batch_norm_layers

    spec = lambda name: ModelSpec(name=name, in_shape=(3, 32, 32), num_classes=10, activation="relu")  # noqa: E731
    assert batch_norm_layers(build_model(spec("convnet")))
    assert batch_norm_layers(build_model(spec("resnet18")))
    assert not batch_norm_layers(build_model(spec("lenet")))
    assert not batch_norm_layers(build_model(spec("quickstart-cnn")))


def test_client_processes_must_fit_in_memory():
    """Flower starts int(cpus / client_cpus) client processes at once: 0.001 CPUs per client on 2
    cores (2,000 processes) is refused with the smallest share that fits; 1 CPU per client passes."""
    from fedattack.limits import ACTOR_MEMORY, check_actors

    check_actors(2, 1.0, 4 * ACTOR_MEMORY)
    check_actors(2, 0.001, None)  # memory unknown: nothing to check against
    with pytest.raises(ConfigError, match=r"fl.client_cpus: 0.001 CPUs per client .* 2000 client processes.*"
                                          r"allowed: at least 0.667"):
        check_actors(2, 0.001, 4 * ACTOR_MEMORY)
