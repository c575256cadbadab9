"""The simulation behind the optimization attacks matches the real client, and vmapped
restarts compute exactly what a loop over restarts does."""

from __future__ import annotations

import pytest
import torch

from fedattack.attacks.engine import (RunningStatsRecorder, batch_norm_colour, running_statistics,
                                      cosine_distance, functional_model, leaked_colour, matching, replay, schedule,
                                      weighted_median)
from fedattack.attacks.optimize import (AdamSchedule, Unknowns, arrangement_key, batched_objective, epoch_batches,
                                        label_plan, neighbours, random_orders, reshuffles, screen_labels)
from fedattack.testing.cases import epoch_orders, observed_update, synthetic_update, training_order
from fedattack.threat import DataSpec


@pytest.mark.parametrize("overrides", [
    ["client.batch_size=3", "client.local_steps=3"],
    ["client.local_steps=0", "client.local_epochs=2", "client.batch_size=2", "victim.client=0"],
    ["client.momentum=0.9", "client.local_steps=3", "client.lr=0.05"],
    ["model.name=convnet", "model.activation=relu", "model.width=8"],
    ["client.optimizer=adam", "client.weight_decay=0.01", "client.local_steps=3", "client.lr=0.001"],
    ["client.momentum=0.9", "client.nesterov=true", "client.weight_decay=0.001", "client.local_steps=3"],
    ["client.proximal_mu=2", "client.momentum=0.9", "client.local_steps=4", "client.lr=0.1"],
], ids=["steps", "epochs", "momentum", "batchnorm", "adam", "nesterov", "fedprox"])
def test_simulated_update_reproduces_the_client(overrides):
    from dataclasses import replace

    obs, truth = observed_update("seed=3", *overrides)
    order = training_order(truth, "seed=3", *overrides)
    v = functional_model(obs)
    sim = replay(v, truth.images[order], truth.labels[order], obs.protocol)

    def rel(a):
        return float(torch.sqrt(sum(((a[k] - obs.update[k]) ** 2).sum() for k in a)
                                / sum((obs.update[k] ** 2).sum() for k in a)))
    assert rel(sim) < 1e-4
    if obs.protocol.proximal_mu:  # the proximal term is part of what the client did
        plain = replay(v, truth.images[order], truth.labels[order], replace(obs.protocol, proximal_mu=0.0))
        assert rel(plain) > 1e-3
    # the grouping of samples into steps is information the simulation uses
    if obs.protocol.local_steps > 1 and obs.protocol.local_epochs == 1:
        shuffled = list(reversed(order))
        other = replay(v, truth.images[shuffled], truth.labels[shuffled], obs.protocol)
        assert float(cosine_distance(other, obs.update)) > 1e3 * float(cosine_distance(sim, obs.update)) + 1e-9


@pytest.mark.parametrize("overrides, indices", [
    (["client.batch_size=3", "client.local_steps=5"], [3, 17, 42, 99]),  # steps run past the samples: wrap around
    (["client.batch_size=8", "client.local_steps=2"], [3, 17, 42]),  # a batch larger than the samples: all of them
], ids=["wrap", "large-batch"])
def test_steps_over_a_small_client_are_replayed_as_it_trained(overrides, indices):
    obs, truth = observed_update("seed=3", *overrides, indices=indices)
    order = training_order(truth, "seed=3", *overrides)
    sim = replay(functional_model(obs), truth.images[order], truth.labels[order], obs.protocol)
    rel = torch.sqrt(sum(((sim[k] - obs.update[k]) ** 2).sum() for k in sim)
                     / sum((obs.update[k] ** 2).sum() for k in sim))
    assert float(rel) < 1e-4


def test_batchnorm_is_simulated_in_training_mode():
    obs, truth = observed_update("seed=3", "model.name=convnet", "model.activation=relu", "model.width=8")
    order = training_order(truth, "seed=3", "model.name=convnet", "model.width=8")
    x, y = truth.images[order], truth.labels[order]
    train = cosine_distance(replay(functional_model(obs), x, y, obs.protocol), obs.update)
    frozen = cosine_distance(replay(functional_model(obs, train_mode=False), x, y, obs.protocol), obs.update)
    assert float(train) < 1e-5 < 0.1 < float(frozen)


def test_schedule_step_and_epoch_modes():
    assert schedule(4, 2, 2) == [[0, 1], [2, 3]]
    assert schedule(3, 2, 3) == [[0, 1], [2, 0], [1, 2]]  # step mode wraps around
    assert schedule(5, 2, 6, epochs=2) == [[0, 1], [2, 3], [4]] * 2  # epoch mode, last batch smaller
    assert schedule(1, 4, 1) == [[0]]


def test_vmapped_restarts_equal_a_loop():
    obs, truth = observed_update("seed=1", "client.batch_size=2", "client.local_steps=2")
    problem = matching(obs, distance="cosine", priors={"tv": 1e-3})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, 4, *obs.data.shape), generator=gen).requires_grad_(True)
    labels = torch.stack([truth.labels, truth.labels.flip(0), truth.labels])
    u = Unknowns(x=x, labels=labels)
    batched = batched_objective(problem, u)
    (gx,) = torch.autograd.grad(batched.sum(), x)
    for r in range(3):
        xr = x[r].detach().clone().requires_grad_(True)
        loss = problem.objective(xr, labels[r])
        (gr,) = torch.autograd.grad(loss, xr)
        assert torch.allclose(batched[r], loss, rtol=1e-4, atol=1e-7)
        assert torch.allclose(gx[r], gr, rtol=1e-3, atol=1e-9)


def test_label_plan_tries_distinct_groupings_first():
    obs, _ = observed_update("seed=1", "client.batch_size=2", "client.local_steps=2")
    plan = label_plan([torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])], obs.protocol, 6,
                      torch.Generator().manual_seed(0))
    groupings = {tuple(tuple(sorted(p[list(b)].tolist())) for b in ([0, 1], [2, 3])) for p in plan}
    assert len(groupings) == len(plan) == 5  # 3 groupings of {0,0,1,1} into two steps, 2 of {0,1,1,1}
    assert plan[0].tolist() == [0, 0, 1, 1]
    one_step = observed_update("seed=1", "client.batch_size=4", "client.local_steps=1")[0]
    assert len(label_plan([torch.tensor([0, 0, 1, 1])], one_step.protocol, 6, torch.Generator())) == 1


def test_neighbours_are_swaps_between_steps_and_single_relabels():
    steps = [[0, 1], [2, 3]]
    near = neighbours(torch.tensor([0, 0, 1, 2]), steps, classes=3)
    keys = [arrangement_key(c, steps) for c, _ in near]
    assert len(keys) == len(set(keys)) and arrangement_key(torch.tensor([0, 0, 1, 2]), steps) not in keys
    assert ((0, 1), (0, 2)) in keys  # a 0 of step 1 traded with the 1 of step 2
    assert ((0, 0), (1, 1)) in keys  # the 2 relabelled as 1
    # a swap carries the images along with their labels
    cand, order = next((c, o) for c, o in near if arrangement_key(c, steps) == ((0, 1), (0, 2)))
    assert torch.equal(cand, torch.tensor([0, 0, 1, 2])[order])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_search_recovers_the_grouping_and_a_missed_label(seed):
    """Four samples of four classes in two local steps; the search starts from a candidate that
    misses class 3 and groups the others wrongly, and must end at the client's grouping (one
    relabel and one swap away)."""
    obs, truth = synthetic_update([0, 1, 2, 3], steps=2, shape=(3, 16, 16), seed=seed)
    start = torch.tensor([[0, 2, 1, 1]])
    u = screen_labels(matching(obs, None, "cosine"), start, 1, AdamSchedule(25, 0.1, decay=False), data=obs.data,
                      protocol=obs.protocol, gen=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
                      init="randn", size=None, bounds=obs.data.bounds(), rounds=4, moves=64)
    steps = schedule(4, 2, 2)
    assert arrangement_key(u.labels[0].cpu(), steps) == arrangement_key(truth.labels, steps)


def _real_training(model, batches, x, y, make_opt):
    """Train `model` in place with a torch optimizer over `batches` of (x, y); return new - start."""
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = make_opt(model.parameters())
    model.train()
    for idx in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach() - start[k] for k, v in model.named_parameters()}


@pytest.mark.parametrize("optimizer,kwargs,model", [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-3}, ["model.name=convnet", "model.width=4"]),
    # Adam turns the numerically-zero gradient of a convolution's bias before BatchNorm into full
    # steps whose sign is round-off: compared on a model without BatchNorm
    ("adam", {"weight_decay": 1e-3}, ["model.name=lenet"]),
])
def test_replay_follows_the_clients_torch_optimizer(optimizer, kwargs, model):
    from dataclasses import replace

    from fedattack.models import build_model

    obs, truth = observed_update("seed=1", *model, "model.activation=relu", "data.image_size=16",
                                 "client.batch_size=2", "client.local_steps=3")
    protocol = replace(obs.protocol, optimizer=optimizer, lr=0.01, momentum=kwargs.get("momentum", 0.0),
                       nesterov=kwargs.get("nesterov", False), weight_decay=kwargs["weight_decay"])
    model = build_model(obs.model)
    model.load_state_dict({**obs.buffers, **obs.global_params})
    batches = schedule(len(truth.labels), 2, 3)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01, **kwargs),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01, **kwargs)}[optimizer]
    real = _real_training(model, batches, truth.images, truth.labels, make)
    replayed = replay(functional_model(obs), truth.images, truth.labels, protocol)
    for k in real:
        assert torch.allclose(replayed[k], real[k], atol=1e-6, rtol=1e-4), k


def test_per_epoch_copies_replay_a_client_that_reshuffles_every_epoch():
    from dataclasses import replace

    from fedattack.models import build_model

    obs, truth = observed_update("seed=2", "client.batch_size=2", "client.local_steps=2")
    x, y = truth.images, truth.labels  # 4 samples
    model = build_model(obs.model)
    model.load_state_dict(obs.global_params, strict=False)
    orders = [[0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2]]  # the client's shuffle in each of 3 epochs
    batches = [o[i:i + 2] for o in orders for i in (0, 2)]
    real = _real_training(model, batches, x, y, lambda p: torch.optim.SGD(p, lr=0.05))
    protocol = replace(obs.protocol, lr=0.05, local_steps=6, local_epochs=3, batch_size=2, num_examples=4)
    fm = functional_model(obs)
    copies = torch.stack([x[o] for o in orders]), torch.stack([y[o] for o in orders])
    apart = replay(fm, *copies, protocol)
    together = replay(fm, x, y, protocol)  # one copy: the first epoch's grouping in every epoch

    def rel(u):
        return float(torch.sqrt(sum(((u[k] - real[k]) ** 2).sum() for k in real) / sum((real[k] ** 2).sum() for k in real)))

    assert rel(apart) < 1e-4 < 1e-2 < rel(together)


def test_layer_cosine_leaves_out_tensors_without_signal():
    from fedattack.attacks.engine import layer_cosine_distance

    target = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([1e-9, -1e-9])}  # b: numerically zero
    close = {"w": torch.tensor([2.0, 4.0]), "b": torch.tensor([5.0, 5.0])}
    assert float(layer_cosine_distance(close, target)) < 1e-6
    assert float(cosine_distance(close, target)) > 0.1  # a global cosine is thrown off by b
    silent = {"w": torch.tensor([2.0, 1.0], requires_grad=True), "b": torch.zeros(2, requires_grad=True)}
    loss = layer_cosine_distance(silent, target)
    assert float(loss) == pytest.approx(1 - 4 / (5 ** 0.5 * 5 ** 0.5))  # the silent tensor is left out
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in silent.values())


@pytest.mark.parametrize("name", ["l2", "l1", "cosine"])
def test_distances_over_all_tensors_as_the_papers_define_them(name):
    from fedattack.attacks.engine import DISTANCES

    gen = torch.Generator().manual_seed(3)
    b = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen),
         "fc": torch.randn(2, 4, generator=gen)}
    a = {k: torch.randn(v.shape, generator=gen) for k, v in b.items()}
    va, vb = (torch.cat([t[k].reshape(-1).double() for k in b]) for t in (a, b))
    expected = {"l2": ((va - vb) ** 2).sum(), "l1": (va - vb).abs().sum(),
                "cosine": 1 - va @ vb / (va.norm() * vb.norm())}[name]
    assert float(DISTANCES[name](a, b)) == pytest.approx(float(expected), rel=1e-5)
    extra = {**a, "unused": torch.ones(3)}  # only the target's tensors count, in its order
    assert float(DISTANCES[name](dict(reversed(list(extra.items()))), b)) == pytest.approx(float(expected), rel=1e-5)


def test_matching_and_defense_specs_refuse_unknown_names_in_one_line():
    from fedattack.defenses.base import DefenseSpec
    from fedattack.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^distance: 'cosin' is not one of l2, l1, cosine, layer-cosine$"):
        matching(None, distance="cosin")
    with pytest.raises(ConfigError, match=r"^priors: 'tvv' is not one of tv, l2, epoch-invariance$"):
        matching(None, priors={"tvv": 1.0})
    with pytest.raises(ConfigError, match=r"^priors: expected \{prior name: weight\}, got \['tv'\]$"):
        matching(None, priors=["tv"])
    with pytest.raises(ConfigError, match=r"^priors.tv: a weight is a finite number >= 0, got -1.0$"):
        matching(None, priors={"tv": -1.0})
    from fedattack.attacks.labels import recover_labels

    with pytest.raises(ConfigError, match=r"^n: the number of samples to label, an integer >= 1; got -1$"):
        recover_labels(None, -1)
    with pytest.raises(ConfigError, match=r"^where: 'bogus' is not one of training, update, protocol, model"):
        DefenseSpec(name="mine", params=object, paper="", where="bogus")


RESHUFFLED = ("data.name=photos", "client.local_steps=0", "client.local_epochs=2", "client.batch_size=2")


@pytest.mark.parametrize("seed", [0, 1])
def test_per_epoch_orders_reproduce_a_reshuffling_client(seed):
    """A client that reshuffles every epoch: the images in the client's orders reproduce its
    update, the same images in one fixed order do not."""
    overrides = (*RESHUFFLED, f"seed={seed}")
    obs, truth = observed_update(*overrides, indices=[0, 25, 50, 75, 100, 125])
    first, orders = training_order(truth, *overrides), epoch_orders(truth, *overrides)
    assert orders.shape == (2, 6) and not torch.equal(orders[0], orders[1])
    x, y = truth.images[first][None], truth.labels[first][None]
    problem = matching(obs, None, "cosine")
    exact = batched_objective(problem, Unknowns(x=x, labels=y, orders=orders[None]), "mismatch")
    fixed = batched_objective(problem, Unknowns(x=x, labels=y, orders=torch.arange(6).expand(1, 2, 6)), "mismatch")
    assert float(exact) < 1e-6 and float(fixed) > 100 * float(exact) + 1e-5


def test_reshuffles_move_samples_between_batches_of_one_epoch_and_relabel():
    batches, labels = [[0, 1], [2, 3]], torch.tensor([0, 0, 1, 2])
    orders = torch.arange(4).expand(2, 4).clone()
    near = reshuffles(labels, orders, batches, classes=3)
    keys = [arrangement_key(c, batches, o) for c, o in near]
    assert len(keys) == len(set(keys)) and arrangement_key(labels, batches, orders) not in keys
    assert (((0, 0), (1, 2)), ((0, 1), (0, 2))) in keys  # the second epoch regrouped, the first kept
    assert (((0, 0), (1, 1)), ((0, 0), (1, 1))) in keys  # the 2 relabelled as 1, in both epochs
    assert all(torch.equal(c, labels) for c, o in near if not torch.equal(o, orders))  # images stay


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_search_finds_each_epochs_grouping(seed):
    """Four photos of distinct classes, two epochs of two batches of two, each epoch reshuffled:
    from random orders the search must end at the grouping the client trained on in both
    epochs (on seeds 0, 1 and 3 the epochs group the samples differently, which no single
    order of the samples can hold; on seed 2 alike)."""
    overrides = (*RESHUFFLED, f"seed={seed}")
    obs, truth = observed_update(*overrides, indices=[0, 40, 80, 120])
    first, orders = training_order(truth, *overrides), epoch_orders(truth, *overrides)
    labels = truth.labels[first]
    assert len(set(labels.tolist())) == 4
    gen = torch.Generator().manual_seed(seed)
    start = random_orders(4, 2, 4, gen)
    u = screen_labels(matching(obs, None, "cosine"), labels[torch.randperm(4, generator=gen)].expand(4, 4), 1,
                      AdamSchedule(25, 0.1, decay=False), data=obs.data, protocol=obs.protocol, gen=gen,
                      device=torch.device("cpu"), init="randn", size=None, bounds=obs.data.bounds(), rounds=4,
                      orders=start)
    batches = epoch_batches(4, obs.protocol)
    truth_key = arrangement_key(labels, batches, orders)
    assert arrangement_key(u.labels[0], batches, u.orders[0]) == truth_key


def _first_layer_gradient(layer: torch.nn.Module, x: torch.Tensor, signal: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first layer's gradient when each output unit k passes back the error `signal[k]`
    at every position and image (a one-signed signal where all of it is positive)."""
    out = layer(x)
    (out * signal.view(1, -1, *([1] * (out.dim() - 2)))).sum().backward()
    return {f"first.{k}": p.grad.detach().clone() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_leaked_colour_is_the_images_mean_where_the_signal_has_one_sign(kind):
    data = DataSpec(shape=(3, 8, 8), num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = data.normalize(torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.5 + 0.3)
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 6, 1) if kind == "conv" else torch.nn.Sequential(torch.nn.Flatten(),
                                                                                   torch.nn.Linear(192, 6))
    target = _first_layer_gradient(layer, x, torch.rand(6) + 0.5)
    guess = leaked_colour(target, data)
    assert guess is not None and torch.allclose(guess, x.mean((0, 2, 3)), atol=1e-4)
    assert not torch.allclose(guess, torch.zeros(3), atol=0.1)  # the images are not the dataset mean


def test_leaked_colour_drops_guesses_outside_the_pixel_range_and_needs_a_bias():
    data = DataSpec(shape=(1, 4, 4), num_classes=2, mean=(0.5,), std=(0.25,))  # valid inputs: [-2, 2]
    db = torch.tensor([1.0, 1.0, 1.0, 1.0, 1e-6])
    colours = torch.tensor([0.5, 0.7, 9.0, -5.0, 1.5])  # units 2 and 3 out of range, unit 4 has no signal
    dw = (colours * db).view(5, 1, 1, 1).expand(5, 1, 3, 3).clone()
    assert torch.allclose(leaked_colour({"c.weight": dw, "c.bias": db}, data), torch.tensor([0.5]))
    assert leaked_colour({"c.weight": dw}, data) is None  # a convolution without bias
    assert leaked_colour({"c.weight": dw, "c.bias": torch.zeros(5)}, data) is None  # BatchNorm right after it
    assert leaked_colour({"c.weight": dw.expand(5, 3, 3, 3), "c.bias": db}, data) is None  # not the image's channels
    assert leaked_colour({"c.weight": torch.full((5, 1, 3, 3), 9.0), "c.bias": torch.ones(5)}, data) is None


def test_leaked_colour_is_closer_to_the_clients_colour_than_the_dataset_mean():
    """On Flower's quickstart CNN (ReLU, max-pooling), one photo in one step: the colour read off
    the first convolution's gradient beats the dataset mean (what `randn` starts around) as a
    guess at the photo's mean colour on most victims."""
    closer = 0
    for seed in range(6):
        obs, truth = observed_update("data.name=photos", "model.name=quickstart-cnn", "model.activation=relu",
                                     "client.local_steps=1", "client.batch_size=1", f"seed={seed}")
        guess = leaked_colour(matching(obs, None, "cosine", {}).target, obs.data)
        true_colour = truth.images.mean((0, 2, 3))
        closer += guess is not None and float((guess - true_colour).norm()) < float(true_colour.norm())
    assert closer >= 5


def test_weighing_each_units_colour_guess_by_its_bias_gradient_helps_on_one_image():
    """A unit whose error signal changes sign cancels in db_k and guesses wrong; on one image the
    |db_k|-weighted median is closer to the image's colour than the plain median, summed over
    victims (quickstart CNN and a ReLU LeNet, one photo in one step)."""
    errors = {False: 0.0, True: 0.0}
    for model in ("quickstart-cnn", "lenet"):
        for seed in range(4):
            obs, truth = observed_update("data.name=photos", f"model.name={model}", "model.activation=relu",
                                         "client.local_steps=1", "client.batch_size=1", f"seed={seed}")
            target = matching(obs, None, "cosine", {}).target
            for weighted in errors:
                guess = leaked_colour(target, obs.data, weighted=weighted)
                errors[weighted] += float((guess - truth.images.mean((0, 2, 3))).abs().max())
    assert errors[True] < 0.85 * errors[False]


def test_weighted_median_is_the_value_where_half_the_weight_is_reached():
    values = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]])
    assert torch.equal(weighted_median(values, torch.tensor([1.0, 1.0, 1.0])), torch.tensor([2.0, 4.0]))
    assert torch.equal(weighted_median(values, torch.tensor([0.1, 0.1, 5.0])), torch.tensor([3.0, 3.0]))


BN_CASE = ("data.name=photos", "model.name=convnet", "model.activation=relu", "model.width=8")


@pytest.mark.parametrize("overrides", [
    ["client.local_steps=1", "client.batch_size=1"],
    ["client.local_steps=3", "client.batch_size=2", "client.momentum=0.9"],
], ids=["one-step", "momentum"])
def test_returned_batchnorm_statistics_are_replayed_as_the_client_left_them(overrides):
    """The client sends its BatchNorm running statistics back with its weights; a replay on its
    own images in its order folds the same batch statistics into them, and the matched term is
    small there (the trial takes every step's statistics at the global weights) and large for
    noise or a flat image."""
    obs, truth = observed_update("seed=2", *BN_CASE, *overrides)
    order = training_order(truth, "seed=2", *BN_CASE, *overrides)
    x, y = truth.images[order], truth.labels[order]
    fm = functional_model(obs)
    recorder = RunningStatsRecorder(fm, obs.buffers)
    replay(fm, x, y, obs.protocol, on_step=recorder)
    moved = [k for k in obs.buffers if not torch.equal(obs.buffers[k], obs.returned_buffers[k])]
    assert len(moved) == 15  # 5 BatchNorm layers: mean, variance, batch count
    for k in moved:
        assert torch.allclose(recorder.buffers[k].float(), obs.returned_buffers[k].float(), atol=1e-5, rtol=1e-4), k
    stats = running_statistics(obs, fm)
    at_truth, noise = float(stats(x)), float(stats(torch.randn_like(x)))
    flat = float(stats(x.mean((0, 2, 3), keepdim=True).expand_as(x).contiguous()))
    assert at_truth < 0.05 * min(noise, flat)


def test_running_statistics_need_the_returned_buffers_and_batchnorm():
    from dataclasses import replace

    obs, _ = observed_update("seed=2", *BN_CASE)
    assert running_statistics(replace(obs, returned_buffers={}), functional_model(obs)) is None
    assert running_statistics(replace(obs, returned_buffers=obs.buffers), functional_model(obs)) is None
    lenet, _ = observed_update("seed=2", "data.name=photos")
    assert not lenet.returned_buffers and running_statistics(lenet, functional_model(lenet)) is None
    assert not matching(lenet, None, "cosine", {}, bn_stats=1.0).observed
    assert matching(obs, None, "cosine", {}, bn_stats=1.0).observed
    assert not matching(obs, None, "cosine", {}, bn_stats=0.0).observed


@pytest.mark.parametrize("overrides", [
    ["client.local_steps=1", "client.batch_size=1"],
    ["client.local_steps=2", "client.batch_size=2"],
    ["client.local_steps=0", "client.local_epochs=2", "client.batch_size=4"],
], ids=["one-image", "steps", "epochs"])
def test_batchnorm_hides_the_colour_from_the_update_but_not_from_its_running_mean(overrides):
    """BatchNorm right after the first convolution zeroes its bias gradient, so the update leaks no
    colour (`leaked_colour` None); the returned running mean does, closer to the client's mean
    colour than the dataset mean on every seed."""
    for seed in range(3):
        obs, truth = observed_update(f"seed={seed}", *BN_CASE, *overrides)
        fm = functional_model(obs)
        assert leaked_colour(matching(obs, None, "cosine", {}).target, obs.data) is None
        guess = batch_norm_colour(running_statistics(obs, fm), obs.data)
        true_colour = truth.images.mean((0, 2, 3))
        assert float((guess - true_colour).norm()) < 0.25 * float(true_colour.norm()), seed
