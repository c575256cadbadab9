"""Soft max-pooling (fedattack/attacks/pooling.py) and its annealing in the attacks' Adam runs."""

import pytest
import torch

from fedattack.attacks.optimize import AdamSchedule, soft_temperature
from fedattack.attacks.pooling import SoftMaxPool2d, soften_max_pools, tiles
from fedattack.models.architectures import quickstart_cnn


def test_temperature_zero_is_the_max_pool_and_high_is_the_mean():
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(0))
    pool = torch.nn.MaxPool2d(2)
    soft = SoftMaxPool2d(pool)
    assert torch.equal(soft(x), pool(x))
    soft.temperature = 1e-4
    assert torch.allclose(soft(x), pool(x), atol=1e-3)
    soft.temperature = 1e4
    assert torch.allclose(soft(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-3)
    soft.temperature = 0.3
    between = soft(x)
    assert (between < pool(x)).any() and (between > torch.nn.functional.avg_pool2d(x, 2)).all()


def test_soft_pool_vectorizes_over_a_leading_batch():
    x = torch.randn(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    soft = SoftMaxPool2d(torch.nn.MaxPool2d(2))
    soft.temperature = 0.5
    batched = torch.func.vmap(soft)(x)
    assert torch.allclose(batched, torch.stack([soft(v) for v in x]), atol=1e-6)


@pytest.mark.parametrize("pool, tiled", [(torch.nn.MaxPool2d(2), True), (torch.nn.MaxPool2d(2, 2), True),
                                         (torch.nn.MaxPool2d((2, 3)), True), (torch.nn.MaxPool2d(3, 2), False),
                                         (torch.nn.MaxPool2d(2, padding=1), False),
                                         (torch.nn.MaxPool2d(2, ceil_mode=True), False)])
def test_only_tiling_pools_are_softened(pool, tiled):
    assert tiles(pool) is tiled
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), pool)
    swapped = soften_max_pools(model)
    assert len(swapped) == int(tiled)
    assert isinstance(model[1], SoftMaxPool2d if tiled else torch.nn.MaxPool2d)


def test_softened_model_is_the_same_function_and_keeps_its_parameters():
    torch.manual_seed(0)
    model = quickstart_cnn((3, 32, 32), 10, torch.nn.ReLU)
    x = torch.randn(3, 3, 32, 32)
    before, names = model(x), [n for n, _ in model.named_parameters()]
    swapped = soften_max_pools(model)
    assert len(swapped) == 1  # the quickstart CNN's one pool module, used twice
    assert torch.equal(model(x), before)
    assert [n for n, _ in model.named_parameters()] == names
    swapped[0].temperature = 0.3
    assert not torch.allclose(model(x), before)


def test_temperature_falls_linearly_to_zero_at_the_share():
    assert soft_temperature(0.3, 0, 100) == pytest.approx(0.3)
    assert soft_temperature(0.3, 25, 100) == pytest.approx(0.15)
    assert soft_temperature(0.3, 50, 100) == 0.0 and soft_temperature(0.3, 99, 100) == 0.0
    assert soft_temperature(0.3, 60, 100, share=0.8) == pytest.approx(0.075)
    assert soft_temperature(0.0, 0, 100) == 0.0


QUICKSTART_ONE_PHOTO = ("data.name=photos", "model.name=quickstart-cnn", "model.activation=relu",
                        "data.image_size=32", "client.local_steps=1", "client.batch_size=1")


def test_an_annealed_run_ends_on_the_hard_model():
    from fedattack.attacks.engine import matching
    from fedattack.attacks.optimize import batched_objective, init_unknowns, run_adam
    from fedattack.testing.cases import observed_update

    obs, truth = observed_update(*QUICKSTART_ONE_PHOTO, "data.image_size=16", "seed=0")
    problem = matching(obs, distance="cosine", priors={"tv": 0.1})
    u = init_unknowns(obs.data, 1, 2, truth.labels, torch.Generator().manual_seed(0), torch.device("cpu"))
    final = run_adam(problem, u, AdamSchedule(6, soft_pool=0.3, balanced=True), obs.data.bounds(torch.device("cpu")))
    assert problem.trial.model.pools and all(p.temperature == 0 for p in problem.trial.model.pools)
    with torch.no_grad():
        assert torch.equal(final, batched_objective(problem, u, "mismatch"))


def test_soft_pooling_helps_invgrad_on_the_quickstart_cnn():
    """One photo, one step, Flower's quickstart CNN (two max-pools), a short run of 300
    iterations, attack seed = victim: annealing the pools gains on most victims and on average
    (measured: +1.4 to +4.0 dB on each of these four, +2.5 on average)."""
    from dataclasses import replace

    from fedattack.attacks import ATTACKS, AttackContext
    from fedattack.metrics.images import match_and_score
    from fedattack.testing.cases import observed_update

    spec = ATTACKS.get("invgrad")
    gains = []
    for seed in range(4):
        obs, truth = observed_update(*QUICKSTART_ONE_PHOTO, f"seed={seed}")
        scored = []
        for soft in (0.0, 0.3):
            rec = spec(obs, replace(spec.params(), iterations=300, soft_pool=soft), AttackContext(seed=seed))
            pixels = obs.data.to_pixels(rec.images.detach()).clamp(0, 1).numpy()
            scored.append(float(match_and_score(pixels, obs.data.to_pixels(truth.images).numpy()).psnr.mean()))
        gains.append(scored[1] - scored[0])
    assert sum(g > 0 for g in gains) >= 3, gains
    assert sum(gains) / len(gains) >= 1.0, gains
