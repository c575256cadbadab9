"""Label recovery from the last layer's gradient (fedattack.attacks.labels)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedattack import config as fconfig
from fedattack.attacks.labels import (LABELS, apportion, completions, label_hypotheses, nearby_counts, present_classes,
                                     recover_labels)
from fedattack.errors import ConfigError
from fedattack.defenses.base import scaled_by
from fedattack.metrics.labels import label_accuracy
from fedattack.testing.cases import observed_update, synthetic_update
from fedattack.threat import DefenseSetting


def accuracy(method: str, labels: list[int], **kw) -> float:
    obs, truth = synthetic_update(labels, **kw)
    pred = LABELS.get(method)(obs, len(labels))
    assert pred.shape == (len(labels),) and pred.dtype == torch.long
    return label_accuracy(pred.numpy(), truth.labels.numpy())


@pytest.mark.parametrize("method", ["idlg", "yin", "llg", "geng", "bias"])
def test_single_sample_label_is_exact(method):
    for label in (0, 3, 9):
        assert accuracy(method, [label], seed=label) == 1.0


@pytest.mark.parametrize("method", ["yin", "idlg", "llg", "bias", "geng"])
def test_distinct_labels_in_a_batch(method):
    labels = [7, 2, 5, 0, 9, 4]
    assert accuracy(method, labels, activation="relu", seed=1) >= 5 / 6


@pytest.mark.parametrize("method", ["bias", "geng"])
@pytest.mark.parametrize("model,activation", [("lenet", "sigmoid"), ("convnet", "relu")])
def test_count_methods_recover_repeated_labels(method, model, activation):
    rng = np.random.default_rng(4)
    labels = [int(v) for v in rng.integers(0, 10, 16)]  # with repeats
    acc = accuracy(method, labels, model=model, activation=activation, seed=4)
    # ranking methods return each class at most once (cycling) and must fall short here
    ranked = accuracy("yin", labels, model=model, activation=activation, seed=4)
    assert acc >= 0.9 > ranked


def test_counts_over_several_local_steps():
    labels = [1, 1, 1, 4, 4, 6, 8, 8]
    assert accuracy("bias", labels, steps=4, activation="relu", seed=2) == 1.0


def test_auto_uses_idlg_for_one_sample_and_counts_for_batches():
    obs, _ = synthetic_update([3])
    assert recover_labels(obs, 1)[1] == "idlg"
    obs, _ = synthetic_update([3, 3, 5])
    assert recover_labels(obs, 3)[1] == "bias"


def test_apportion_and_nearby_counts():
    assert apportion(torch.tensor([1.6, 2.4, -0.3]), 4).tolist() == [2, 2, 0]
    assert apportion(torch.tensor([0.0, 0.0]), 3).sum() == 3
    near = nearby_counts(torch.tensor([1.7, 2.3]), 4, 3)
    assert [c.tolist() for c in near] == [[2, 2], [1, 3], [3, 1]]
    assert all(int(c.sum()) == 4 for c in nearby_counts(torch.tensor([2.1, 0.9, 1.0]), 4, 8))


def test_hypotheses_contain_the_truth_on_real_faces():
    # lfw-subset's two classes: the count estimate is close but not always right; the true
    # multiset is among the few most plausible candidates
    for seed in range(4):
        obs, truth = observed_update(f"seed={seed}")
        hyps, method = label_hypotheses(obs, len(truth.labels), "auto", k=3)
        assert method == "bias" and 1 <= len(hyps) <= 3
        assert any(sorted(h.tolist()) == sorted(truth.labels.tolist()) for h in hyps)


@pytest.mark.parametrize("steps", [1, 3])
def test_classes_the_update_proves_present(steps):
    # an absent class's bias only ever moves down under plain SGD, so a bias that went up
    # proves its class present: distinct labels are then known exactly, repeated ones narrowed
    for seed, labels in enumerate(([7, 2, 5, 0], [3, 3, 8, 1], [4, 9, 4, 4, 6, 0])):
        obs, truth = synthetic_update(labels, model="convnet", activation="relu", steps=steps, seed=seed)
        present = set(present_classes(obs).tolist())
        assert present and present <= set(labels)
        hyps, _ = label_hypotheses(obs, len(labels), "auto", k=64)
        assert all(present <= set(h.tolist()) for h in hyps)
        assert any(h.tolist() == sorted(labels) for h in hyps)
        assert (len(hyps) == 1) == (len(present) == len(labels))
    noisy = replace(obs, protocol=replace(obs.protocol, defenses=(DefenseSetting("gaussian", {"sigma": 0.1}),)))
    assert present_classes(noisy) is None


def test_completions_rank_every_multiset_holding_the_proven_classes():
    got = [c.tolist() for c in completions(torch.tensor([0]), torch.tensor([1.6, 2.4, -0.3]), 4, 20)]
    assert got[0] == [2, 2, 0] and len(got) == 10  # class 0 once, then any 3 of the 3 classes: 10 multisets
    assert all(c[0] >= 1 and sum(c) == 4 for c in got)
    assert completions(torch.tensor([0]), torch.zeros(10), 30, 8) == []  # too many to enumerate


def test_unknown_label_method_is_a_config_error():
    with pytest.raises(ConfigError, match="audit.labels"):
        fconfig.load(None, ["audit.labels=nosuch"])


def test_dimitrov_counts_over_many_local_steps():
    # 32 samples with skewed labels, 8 local steps: the model's softmax drifts during local
    # training, which the start-to-end interpolation follows and the start-only bias estimate misses
    dim, bias = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        labels = [int(v) for v in rng.choice(10, 32, p=[.4, .2, .1, .1, .05, .05, .05, .05, 0, 0])]
        obs, truth = synthetic_update(labels, model="convnet", activation="relu", steps=8, lr=0.05, seed=seed)
        for method, acc in (("dimitrov", dim), ("bias", bias)):
            acc.append(label_accuracy(LABELS.get(method)(obs, 32).numpy(), truth.labels.numpy()))
    assert np.mean(dim) >= 0.9 and np.mean(dim) >= np.mean(bias) + 0.05


def test_dimitrov_single_step_matches_bias_form():
    assert accuracy("dimitrov", [7, 2, 5, 0, 9, 4], activation="relu", seed=1) >= 5 / 6


SIGN_KEEPING = {"clip": ["clip.bound=0.5"], "topk": ["topk.keep=0.3"], "gaussian": ["gaussian.sigma=0"]}


@pytest.mark.parametrize("defense", sorted(SIGN_KEEPING))
def test_a_defense_that_keeps_the_signs_keeps_what_they_prove(defense):
    # clipping scales the update, top-k zeroes entries, zero noise changes nothing: a bias that
    # went up still proves its class present, on real local training (digits: 10 classes)
    for seed in range(3):
        case = (f"seed={seed}", "data.name=digits", "client.local_steps=2", "client.batch_size=4")
        obs, truth = observed_update(*case, f"client.defenses=[{defense}]", *SIGN_KEEPING[defense])
        present = present_classes(obs)
        assert present is not None and len(present) >= 1
        assert set(present.tolist()) <= set(truth.labels.tolist())
        if defense == "gaussian":  # the same update as no defense at all, and the same proof
            plain, _ = observed_update(*case)
            assert present.tolist() == present_classes(plain).tolist()


@pytest.mark.parametrize("setting", [("gaussian", {"sigma": 0.01}), ("laplacian", {"scale": 0.01}),
                                     ("quantize", {"bits": 4}), ("mixup", {}), ("dpsgd", {})])
def test_a_defense_that_can_flip_signs_proves_nothing(setting):
    obs, _ = synthetic_update([7, 2, 5, 0], model="convnet", activation="relu", seed=0)
    assert present_classes(obs) is not None
    defended = replace(obs, protocol=replace(obs.protocol, defenses=(DefenseSetting(*setting),)))
    assert present_classes(defended) is None


def test_fedprox_keeps_the_proof_while_each_step_shrinks_the_pull():
    # lr * mu <= 1: the proximal pull never lifts an absent class's bias above where it started;
    # past that it overshoots, and absent classes would read as present (lr 0.1, mu 25)
    for seed in range(3):
        case = (f"seed={seed}", "data.name=digits", "client.local_steps=4", "client.batch_size=2", "client.lr=0.1")
        obs, truth = observed_update(*case, "client.proximal_mu=5")
        present = present_classes(obs)
        assert present is not None and set(present.tolist()) <= set(truth.labels.tolist())
        over, _ = observed_update(*case, "client.proximal_mu=25")
        assert present_classes(over) is None
        assert present_classes(replace(obs, protocol=replace(obs.protocol, momentum=0.9))) is None


def test_weight_decay_keeps_the_proof_for_one_step_only():
    # one SGD step: the update's bias is -lr * (g + wd * b), and the estimate takes wd * b out
    # exactly, so a bias gradient below zero still proves its class; over two steps it does not
    for seed in range(3):
        case = (f"seed={seed}", "data.name=digits", "client.batch_size=4", "client.lr=0.1", "client.weight_decay=0.5")
        obs, truth = observed_update(*case, "client.local_steps=1")
        present = present_classes(obs)
        assert present is not None and len(present) >= 1
        assert set(present.tolist()) <= set(truth.labels.tolist())
        two, _ = observed_update(*case, "client.local_steps=2")
        assert present_classes(two) is None


@pytest.mark.parametrize("method", ["bias", "geng", "dimitrov"])
def test_count_methods_undo_the_unknown_factor_of_clipping(method):
    # clipping at its bound multiplies the update by a factor the server is not told (here 0.1
    # to 0.2); the counts, read as gradient units, came out wrong on 5 or 6 of 48 labels before
    # the factor was estimated from their being whole numbers
    plain, clipped = [], []
    for data, model in (("photos", "lenet"), ("digits", "lenet")):
        for seed in range(3):
            case = (f"seed={seed}", f"data.name={data}", f"model.name={model}", "model.activation=relu",
                    "client.local_steps=2", "client.batch_size=4")
            obs, truth = observed_update(*case, "client.defenses=[clip]", "clip.bound=0.1")
            unclipped, _ = observed_update(*case)
            assert scaled_by(obs.protocol.defenses, obs.gradient_estimate())
            assert not scaled_by((DefenseSetting("clip", {"bound": 100.0}),), unclipped.gradient_estimate())
            noisy = {k: v + 0.01 * torch.randn_like(v) for k, v in obs.gradient_estimate().items()}
            assert not scaled_by(obs.protocol.defenses, noisy)  # noise after clipping: not known to be at the bound
            for acc, o in ((clipped, obs), (plain, unclipped)):
                acc.append(label_accuracy(LABELS.get(method)(o, 8).numpy(), truth.labels.numpy()))
    assert np.mean(clipped) >= 0.85 and np.mean(clipped) >= np.mean(plain) - 0.1  # without: 0.77-0.78
