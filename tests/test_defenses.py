"""Client-side defenses: each one's numerical effect, composition, errors, and end-to-end runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedattack.client.train import local_train, soft_cross_entropy
from fedattack.defenses import DEFENSES, DefenseContext
from fedattack.defenses.base import adapt_update
from fedattack.errors import ConfigError
from fedattack.experiment import build
from fedattack.threat import DefenseSetting, Protocol


def _ctx(lr=0.1, steps=2, seed=0, **kw) -> DefenseContext:
    return DefenseContext(generator=torch.Generator().manual_seed(seed), lr=lr, steps=steps, **kw)


def _update(seed=0, shapes=((200, 50), (50,), (10, 200))) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(s, generator=g) * 0.01 for i, s in enumerate(shapes)}


def _apply(name: str, update, ctx, **params):
    spec = DEFENSES.get(name)
    return spec.on_update(update, spec.params(**params), ctx)


def _grad_units(update, ctx):
    return {k: -v / ctx.scale for k, v in update.items()}


def _norm(tensors) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in tensors.values())))


def _train(small_cfg, *overrides, indices=None, client=0):
    cfg = small_cfg(*overrides)
    exp = build(cfg)
    model = exp.initial_model()
    part = exp.partitions[client] if indices is None else np.asarray(indices)
    sent = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = local_train(model, exp.train, part, cfg, rnd=1, client=client)
    return exp, model, sent, result


# -- noise and clipping (gradient units) ------------------------------------------

def test_gaussian_noise_std_in_gradient_units():
    update, ctx = _update(), _ctx(lr=0.05, steps=3)
    out = _apply("gaussian", update, ctx, sigma=0.02)
    noise = torch.cat([(_grad_units(out, ctx)[k] - _grad_units(update, ctx)[k]).flatten() for k in update])
    assert noise.numel() > 10_000
    assert abs(float(noise.std()) / 0.02 - 1) < 0.03
    assert abs(float(noise.mean())) < 0.02 * 0.03


def test_laplacian_noise_scale_in_gradient_units():
    update, ctx = _update(), _ctx(lr=0.01, steps=2)
    out = _apply("laplacian", update, ctx, scale=0.05)
    noise = torch.cat([(_grad_units(out, ctx)[k] - _grad_units(update, ctx)[k]).flatten() for k in update])
    assert abs(float(noise.abs().mean()) / 0.05 - 1) < 0.03  # E|X| = b
    assert abs(float(noise.std()) / (0.05 * math.sqrt(2)) - 1) < 0.05  # std = b sqrt(2)


def test_clip_bound_respected_in_gradient_units():
    update, ctx = _update(), _ctx(lr=0.01, steps=4)
    g_norm = _norm(_grad_units(update, ctx))
    out = _apply("clip", update, ctx, bound=g_norm / 3)
    assert _norm(_grad_units(out, ctx)) == pytest.approx(g_norm / 3, rel=1e-5)
    cos = sum((out[k] * update[k]).sum() for k in update) / (_norm(out) * _norm(update))
    assert float(cos) == pytest.approx(1.0, abs=1e-6)  # direction kept
    same = _apply("clip", update, ctx, bound=g_norm * 2)
    assert all(torch.equal(same[k], update[k]) for k in update)


# -- compression ------------------------------------------------------------------

def test_topk_keeps_fraction_of_largest_entries():
    update = _update()
    out = _apply("topk", update, _ctx(), keep=0.1)
    for k, v in update.items():
        kept = out[k] != 0
        assert int(kept.sum()) == math.ceil(0.1 * v.numel())
        assert float(v.abs()[kept].min()) >= float(v.abs()[~kept].max())
        assert torch.equal(out[k][kept], v[kept])


def test_prune_sparsity_matches_percentile_rate():
    update = _update()
    out = _apply("prune", update, _ctx(), rate=0.7)
    for k, v in update.items():
        thresh = np.percentile(v.abs().numpy(), 70)
        assert torch.equal(out[k] == 0, v.abs() < float(thresh))
        assert abs(float((out[k] == 0).float().mean()) - 0.7) < 1.5 / v.numel() + 1e-6


@pytest.mark.parametrize("rounding", ["deterministic", "stochastic"])
def test_quantize_levels(rounding):
    update = _update()
    out = _apply("quantize", update, _ctx(), bits=3, rounding=rounding)
    for k, v in update.items():
        levels = torch.unique(out[k])
        assert len(levels) <= 2 ** 3
        step = float(v.max() - v.min()) / (2 ** 3 - 1)
        grid = (levels - v.min()) / step
        assert torch.allclose(grid, grid.round(), atol=1e-4)  # on the uniform grid between min and max
        err = (out[k] - v).abs().max()
        assert float(err) <= (0.5 if rounding == "deterministic" else 1.0) * step + 1e-6


def test_quantize_stochastic_rounding_is_unbiased():
    v = {"w": torch.linspace(-1, 1, 101).repeat(4000, 1)}
    out = _apply("quantize", v, _ctx(), bits=2, rounding="stochastic")
    assert torch.allclose(out["w"].mean(0), v["w"][0], atol=0.03)


# -- Soteria ------------------------------------------------------------------------

def test_soteria_scores_match_per_feature_loop_and_mask_fraction(small_cfg):
    from fedattack.defenses.soteria import feature_scores

    cfg = small_cfg("model.name=mlp", "model.width=12")
    exp = build(cfg)
    model = exp.initial_model()
    x, _ = exp.train.get(range(3))
    scores = feature_scores(model, x)
    # the authors' recipe: one backward pass per feature of sum_n r_{n,i}
    xx = x.clone().requires_grad_(True)
    cap = {}
    h = model.fc.register_forward_pre_hook(lambda m, a: cap.__setitem__("r", a[0]))
    model(xx)
    h.remove()
    r = cap["r"]
    ref = torch.zeros(r.shape[1])
    for i in range(r.shape[1]):
        seed = torch.zeros_like(r)
        seed[:, i] = 1
        (g,) = torch.autograd.grad(r, xx, seed, retain_graph=True)
        ref[i] = (g.flatten(1).norm(dim=1) / (r[:, i].abs() + 1e-10)).sum()
    assert torch.allclose(scores, ref, rtol=1e-4)

    _, _, _, result = _train(small_cfg, "client.defenses=[soteria]", "soteria.percent=0.75")
    w = result.update["fc.weight"]
    pruned = (w == 0).all(dim=0)
    assert int(pruned.sum()) == round(0.75 * w.shape[1])
    others = [v for k, v in result.update.items() if k != "fc.weight"]
    assert all(bool((v != 0).any()) for v in others)  # only the representation layer's gradient changes


def test_soteria_on_a_batchnorm_model_scores_with_the_batch_statistics_and_keeps_the_running_ones(small_cfg):
    """The score pass ran the model in train mode inside torch.func.vjp, where BatchNorm's
    in-place update of its running statistics raises: every client of a ConvNet failed."""
    from fedattack.defenses.soteria import feature_scores

    model = build(small_cfg("model.name=convnet", "model.width=4")).initial_model()
    model.train()
    x = torch.rand(3, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = feature_scores(model, x)
    assert scores.shape == (model.fc.in_features,) and bool(torch.isfinite(scores).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics unmoved
    _, _, _, result = _train(small_cfg, "model.name=convnet", "model.width=4", "client.defenses=[soteria]",
                             "soteria.percent=0.5")
    w = result.update["fc.weight"]
    assert int((w == 0).all(dim=0).sum()) == round(0.5 * w.shape[1])


# -- DP-SGD (Opacus) ---------------------------------------------------------------

@pytest.mark.parametrize("variant", ["opacus", "fedcdp"])
def test_dpsgd_epsilon_equals_opacus_accountant(small_cfg, variant):
    from opacus.accountants import RDPAccountant

    exp, _, _, result = _train(small_cfg, "client.defenses=[dpsgd]", "client.local_steps=3", "client.batch_size=2",
                               "dpsgd.noise_multiplier=1.1", "dpsgd.max_grad_norm=0.5", "dpsgd.delta=0.0001",
                               f"dpsgd.variant={variant}", indices=list(range(20)))
    n = result.num_examples
    q = 1 / math.ceil(n / 2)
    acc = RDPAccountant()
    for _ in range(result.steps):
        acc.step(noise_multiplier=1.1, sample_rate=q)
    assert result.metrics["dp_sample_rate"] == pytest.approx(q)
    assert result.metrics["epsilon"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)
    assert 1 < result.metrics["epsilon"] < 100
    assert all(torch.isfinite(v).all() for v in result.update.values())


@pytest.mark.parametrize("variant", ["opacus", "fedcdp"])
def test_dpsgd_per_example_clipping_bounds_the_update(small_cfg, variant):
    # one step on the whole (2-sample) round data: sample rate 1, no noise -> the update is
    # -lr * mean of clipped per-example gradients, so its norm is at most lr * C (per layer
    # lr * C / sqrt(L) for Fed-CDP)
    common = ["client.local_steps=1", "client.batch_size=2", "client.lr=0.1", "model.init=uniform"]
    _, _, _, plain = _train(small_cfg, *common, indices=[0, 1])
    _, _, _, dp = _train(small_cfg, *common, "client.defenses=[dpsgd]", "dpsgd.noise_multiplier=0",
                         "dpsgd.max_grad_norm=0.05", f"dpsgd.variant={variant}", indices=[0, 1])
    assert _norm(plain.update) > 0.1 * 0.05 * 2  # clipping is active
    if variant == "opacus":
        assert _norm(dp.update) <= 0.1 * 0.05 * (1 + 1e-5)
    else:
        layer_bound = 0.1 * 0.05 / math.sqrt(len(dp.update))
        assert all(float(v.norm()) <= layer_bound * (1 + 1e-5) for v in dp.update.values())


def test_dpsgd_rejects_batchnorm_models(small_cfg):
    with pytest.raises(ConfigError, match="dpsgd"):
        _train(small_cfg, "client.defenses=[dpsgd]", "model.name=convnet", "model.width=4", "model.activation=relu")


# -- PRECODE ------------------------------------------------------------------------

def test_precode_model_builds_and_trains(small_cfg):
    exp, model, sent, result = _train(small_cfg, "client.defenses=[precode]", "precode.size=16", "precode.beta=0.01")
    assert exp.model_spec.extensions[0][0] == "precode"
    names = [n for n, _ in model.named_parameters()]
    assert {"precode.encoder.weight", "precode.decoder.weight", "fc.weight"} <= set(names)
    assert names[-2:] == ["fc.weight", "fc.bias"]  # the head stays the last layer
    assert model.precode.encoder.out_features == 32 and model.precode.decoder.in_features == 16
    assert float(result.update["precode.encoder.weight"].abs().sum()) > 0
    x, _ = exp.train.get(range(2))
    model.eval()
    assert torch.equal(model(x), model(x))  # eval decodes the mean
    model.train()
    assert not torch.equal(model(x), model(x))  # training samples the bottleneck
    # the server builds the same model (same names and shapes)
    server = exp.initial_model()
    assert {k: v.shape for k, v in server.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    # the KL term is part of the training loss: a larger beta changes the encoder's update
    _, _, _, heavy = _train(small_cfg, "client.defenses=[precode]", "precode.size=16", "precode.beta=10")
    assert not torch.allclose(heavy.update["precode.encoder.weight"], result.update["precode.encoder.weight"])


def test_precode_draws_its_noise_per_client_whatever_the_callers_generator(small_cfg):
    """One image in one step: the client's id changes nothing but the draws of PRECODE's bottleneck."""
    cfg = small_cfg("client.defenses=[precode]", "precode.size=16", "client.batch_size=1", "client.local_steps=1")
    exp = build(cfg)

    def update(client: int, caller_seed: int) -> torch.Tensor:
        model = exp.initial_model()
        torch.manual_seed(caller_seed)
        before = torch.random.get_rng_state()
        out = local_train(model, exp.train, np.array([5]), cfg, rnd=1, client=client)
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left as it was
        return out.update["precode.encoder.weight"]

    first = update(0, caller_seed=0)
    assert torch.equal(first, update(0, caller_seed=123))
    assert not torch.allclose(first, update(1, caller_seed=0))
    assert not torch.allclose(first, local_train(exp.initial_model(), exp.train, np.array([5]), cfg, rnd=2,
                                                 client=0).update["precode.encoder.weight"])


@pytest.mark.parametrize("model", ["quickstart-cnn", "tests.plugins.models:QuickstartNet"])
def test_soteria_and_precode_find_the_head_of_flowers_quickstart_net(small_cfg, model):
    # Flower's quickstart Net names its layers fc1, fc2, fc3: the head is its last Linear layer
    case = ("data.name=photos", f"model.name={model}", "model.activation=relu")
    _, _, _, result = _train(small_cfg, *case, "client.defenses=[soteria]", "soteria.percent=0.5")
    w = result.update["fc3.weight"]
    assert int((w == 0).all(dim=0).sum()) == round(0.5 * w.shape[1]) and bool((result.update["fc2.weight"] != 0).any())
    _, model_, _, result = _train(small_cfg, *case, "client.defenses=[precode]", "precode.size=16")
    names = [n for n, _ in model_.named_parameters()]
    assert names[-4:] == ["precode.decoder.weight", "precode.decoder.bias", "fc3.weight", "fc3.bias"]
    assert model_.precode.encoder.in_features == model_.fc3.in_features
    assert float(result.update["precode.encoder.weight"].abs().sum()) > 0


def test_dpsgd_refuses_a_batchnorm_model_in_one_short_line(small_cfg):
    with pytest.raises(ConfigError) as info:
        _train(small_cfg, "model.name=convnet", "model.width=4", "client.defenses=[dpsgd]")
    said = str(info.value)
    assert said.startswith("client.defenses: dpsgd: Opacus cannot compute per-example gradients of this model "
                           "(BatchNorm cannot support training with differential privacy)")
    assert said.endswith("(model.name=lenet or mlp)") and len(said) < 250, said


@pytest.mark.parametrize("model,defense,says", [
    ("model.name=convnet", "dpsgd", "client.defenses: dpsgd: Opacus cannot compute per-example gradients"),
    ("model.name=tests.plugins.models:conv_head", "soteria", "client.defenses: soteria needs a model with a fully")])
def test_a_run_refuses_a_model_its_defense_cannot_act_on_before_ray_starts(small_cfg, tmp_path, monkeypatch,
                                                                           model, defense, says):
    # the same line `fedattack attack` gives, from the checks before a run, not from inside its clients
    import ray

    from fedattack.simulate import prepare

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(ConfigError, match=f"^{says}"):
        prepare(small_cfg(model, f"client.defenses=[{defense}]"), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_soteria_and_precode_refuse_a_model_without_a_linear_head_naming_the_field():
    from fedattack.defenses.soteria import representation_layer
    from fedattack.models.bottleneck import head_of

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for find in (representation_layer, head_of):
        with pytest.raises(ConfigError, match="client.defenses"):
            find(conv)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precode_training_lowers_loss(small_cfg, seed):
    # lr 0.05: at 0.1 this ReLU model with its VIB block diverges on some seeds, whatever the batch order
    cfg = small_cfg(f"seed={seed}", "client.defenses=[precode]", "precode.size=32", "client.local_steps=30",
                    "client.lr=0.05", "model.activation=relu")
    exp = build(cfg)
    model = exp.initial_model()
    idx = np.arange(4)
    x, y = exp.train.get(idx)
    model.eval()
    before = float(soft_cross_entropy(model(x), y))
    local_train(model, exp.train, idx, cfg, rnd=1, client=0)
    model.eval()
    assert float(soft_cross_entropy(model(x), y)) < 0.5 * before


# -- data-side defenses ----------------------------------------------------------------

def test_mixup_returns_soft_labels(small_cfg):
    from fedattack.defenses.mixup import MixupParams, mixup_batch

    exp = build(small_cfg())
    t = exp.train.targets
    idx = [*np.flatnonzero(t == 0)[:4], *np.flatnonzero(t == 1)[:4]]
    x, y = exp.train.get(idx)
    x, y = x[[0, 4, 1, 5, 2, 6, 3, 7]], y[[0, 4, 1, 5, 2, 6, 3, 7]]
    ctx = _ctx(images=x, labels=y, num_classes=exp.train.spec.num_classes)
    xm, ym = mixup_batch(x[:4], y[:4], MixupParams(alpha=1.0), ctx)
    assert ym.shape == (4, exp.train.spec.num_classes)
    assert torch.allclose(ym.sum(1), torch.ones(4))
    assert bool(((ym > 0) & (ym < 1)).any())  # mixed targets, not one-hot
    assert xm.shape == x[:4].shape and not torch.equal(xm, x[:4])
    logits = torch.randn(4, exp.train.spec.num_classes)
    hard = torch.nn.functional.one_hot(y[:4], exp.train.spec.num_classes).float()
    assert float(soft_cross_entropy(logits, hard)) == pytest.approx(float(soft_cross_entropy(logits, y[:4])), rel=1e-6)


def test_ats_transforms_images(small_cfg):
    from fedattack.defenses.ats import TRANSFORMATIONS, ATSParams, apply_operation, ats_batch

    assert len(TRANSFORMATIONS) == 50
    img = (torch.rand(1, 8, 8) * 255).to(torch.uint8)
    assert torch.equal(apply_operation(img, "invert", 0, 1), 255 - img)
    exp = build(small_cfg())
    x, y = exp.train.get(range(3))
    out1, y1 = ats_batch(x, y, ATSParams("21-13-3"), _ctx(seed=3, data=exp.train.spec))
    out2, _ = ats_batch(x, y, ATSParams("21-13-3"), _ctx(seed=3, data=exp.train.spec))
    assert out1.shape == x.shape and torch.equal(y1, y)
    assert torch.equal(out1, out2)  # seeded
    assert float((out1 - x).abs().mean()) > 0.1  # the images changed
    lo, hi = exp.train.spec.bounds()
    assert bool((out1 >= lo - 1e-5).all() and (out1 <= hi + 1e-5).all())


# -- composition, adaptation, errors -------------------------------------------------

def test_composition_order_is_respected(small_cfg):
    common = ["clip.bound=0.01", "gaussian.sigma=0.05", "client.lr=0.1"]
    _, _, _, clip_then_noise = _train(small_cfg, "client.defenses=[clip,gaussian]", *common)
    _, _, _, noise_then_clip = _train(small_cfg, "client.defenses=[gaussian,clip]", *common)
    scale = 0.1 * clip_then_noise.steps
    assert _norm(noise_then_clip.update) / scale == pytest.approx(0.01, rel=1e-4)
    assert _norm(clip_then_noise.update) / scale > 10 * 0.01


def test_adapt_models(small_cfg):
    update = _update()
    proto = Protocol(lr=0.1, local_steps=2, local_epochs=1, batch_size=2, num_examples=4,
                     defenses=(DefenseSetting("clip", {"bound": 0.05}), DefenseSetting("topk", {"keep": 0.2})))
    observed = _apply("topk", update, _ctx(), keep=0.2)
    trial = {k: torch.randn_like(v, requires_grad=True) for k, v in update.items()}
    out = adapt_update(trial, observed, proto)
    assert _norm(out) <= 0.05 * 0.2 * (1 + 1e-5)
    assert all(torch.equal(out[k] == 0, observed[k] == 0) for k in update)
    sum(v.sum() for v in out.values()).backward()
    assert all(t.grad is not None for t in trial.values())
    # quantization has no model (the plain attack beat a straight-through one): the trial passes unchanged
    q = {"w": torch.randn(30, requires_grad=True)}
    assert DEFENSES.get("quantize").adapt is None
    assert adapt_update(q, q, (DefenseSetting("quantize", {"bits": 2, "rounding": "deterministic"}),))["w"] is q["w"]


@pytest.mark.parametrize("defense", ["clip", "topk", "prune"])
def test_adapt_models_run_batched_under_vmap(defense):
    """Attacks batch their restarts with torch.func.vmap, so a defense's model may not branch on
    a tensor's value in Python."""
    observed = _apply("topk", _update(), _ctx(), keep=0.5)
    proto = Protocol(lr=0.1, local_steps=2, local_epochs=1, batch_size=2, num_examples=4,
                     defenses=(DefenseSetting(defense, {}),))
    trials = {k: torch.randn(3, *v.shape) for k, v in observed.items()}
    batched = torch.func.vmap(lambda t: adapt_update(t, observed, proto))(trials)
    one = adapt_update({k: v[1] for k, v in trials.items()}, observed, proto)
    assert all(torch.allclose(batched[k][1], one[k], atol=1e-6) for k in observed)


@pytest.mark.parametrize("override,field", [
    ("gaussian.sigma=-1", "gaussian.sigma"), ("laplacian.scale=-0.1", "laplacian.scale"),
    ("clip.bound=0", "clip.bound"), ("topk.keep=1.5", "topk.keep"), ("prune.rate=2", "prune.rate"),
    ("quantize.bits=0", "quantize.bits"), ("quantize.rounding=up", "quantize.rounding"),
    ("soteria.percent=1.2", "soteria.percent"), ("dpsgd.delta=1", "dpsgd.delta"),
    ("dpsgd.variant=foo", "dpsgd.variant"), ("dpsgd.max_grad_norm=0", "dpsgd.max_grad_norm"),
    ("mixup.alpha=0", "mixup.alpha"), ("ats.policy=99-1", "ats.policy"), ("precode.size=0", "precode.size"),
    ("secagg.num_shares=2", "secagg.num_shares"), ("secagg.num_shares=1.5", "secagg.num_shares"),
    ("secagg.reconstruction_threshold=1.5",
                                                    "secagg.reconstruction_threshold"),
    ("flowerdp.clipping_norm=0", "flowerdp.clipping_norm"), ("localdp.epsilon=0", "localdp.epsilon"),
    ("client.defenses=[nope]", "client.defenses"),
])
def test_bad_values_name_the_field(small_cfg, override, field):
    with pytest.raises(ConfigError) as err:
        small_cfg(override)
    assert err.value.field == field


def test_specs_declare_main_param_and_placement():
    for name in DEFENSES.names():
        spec = DEFENSES.get(name)
        assert spec.main_param in {f.name for f in __import__("dataclasses").fields(spec.params)}, name
        assert spec.where in ("training", "update", "protocol", "model"), name
    assert DEFENSES.get("secagg").protocol == "secagg"
    assert DEFENSES.get("precode").model_extension == "precode"


@pytest.mark.parametrize("name", sorted(DEFENSES.names()))
def test_local_train_end_to_end(small_cfg, name):
    extra = {"precode": ["precode.size=16"], "soteria": ["soteria.percent=0.5"]}.get(name, [])
    exp, model, sent, result = _train(small_cfg, f"client.defenses=[{name}]", *extra)
    assert result.steps == 2 and result.num_examples > 0
    assert set(result.update) == {n for n, _ in model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in result.update.values())
    assert _norm(result.update) > 0
    assert np.isfinite(result.loss)


# -- Flower's DP pieces through the ClientApp and the strategy ------------------------

def _client_call(cfg, message_type="train", extra_config=None, pid=0):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedattack.client.app import make_client_app

    app = make_client_app(cfg)  # the client's own config; the message carries numbers only
    exp = build(cfg)
    sent = exp.initial_model().state_dict()
    config = ConfigRecord({"server-round": 1, **(extra_config or {})})
    msg = Message(RecordDict({"arrays": ArrayRecord(sent), "config": config}), dst_node_id=1,
                  message_type=message_type)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": pid}, state=RecordDict(), run_config={})
    reply = app(msg, ctx)
    assert not reply.has_error(), reply.error
    received = reply.content["arrays"].to_torch_state_dict()
    return sent, received, dict(reply.content["metrics"])


def test_flowerdp_fixedclipping_mod_clips_in_the_client_app(small_cfg, flower_task):
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    cfg = small_cfg("client.defenses=[flowerdp]")
    _, raw, _ = _client_call(small_cfg(), extra_config={KEY_CLIPPING_NORM: 1e-4})
    sent, received, _ = _client_call(cfg, extra_config={KEY_CLIPPING_NORM: 1e-4})
    raw_norm = _norm({k: raw[k] - sent[k] for k in sent})
    assert raw_norm > 1e-3
    assert _norm({k: received[k] - sent[k] for k in sent}) == pytest.approx(1e-4, rel=1e-4)
    # evaluate messages do not go through the mod (it would fail them: no clipping norm)
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedattack.client.app import make_client_app

    app = make_client_app(cfg)
    msg = Message(RecordDict({"arrays": ArrayRecord(build(cfg).initial_model().state_dict()),
                              "config": ConfigRecord({})}), dst_node_id=1, message_type="evaluate")
    reply = app(msg, Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}))
    assert not reply.has_error()


def test_localdp_mod_noise_std_in_the_client_app(small_cfg, flower_task):
    from fedattack.defenses.flower_dp import LocalDPParams, localdp_std

    over = ["client.defenses=[localdp]", "localdp.clipping_norm=0.000001", "localdp.sensitivity=0.01",
            "localdp.epsilon=2.0", "localdp.delta=0.001"]
    sent, received, metrics = _client_call(small_cfg(*over))
    noise = torch.cat([(received[k] - sent[k]).flatten() for k in sent])
    std = localdp_std(LocalDPParams(0.000001, 0.01, 2.0, 0.001))
    assert std == pytest.approx(0.01 * math.sqrt(2 * math.log(1.25 / 0.001)) / 2.0)
    assert abs(float(noise.std()) / std - 1) < 0.05
    assert metrics["localdp_epsilon"] == 2.0 and metrics["epsilon"] == 2.0
    _, again, _ = _client_call(small_cfg(*over))
    assert all(torch.equal(received[k], again[k]) for k in sent)  # seeded per (seed, round, client)


@pytest.mark.parametrize("name", ["flowerdp", "localdp"])
def test_flowers_dp_mods_let_a_zero_update_through(name, flower_task):
    """A saturated model trains to a zero update, and Flower's clipping divided by its norm:
    ZeroDivisionError failed the client (a run) or ended `fedattack attack`."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    from fedattack.defenses.base import DefenseContext
    from fedattack.defenses.flower_dp import (FlowerDPParams, LocalDPParams, ZeroUpdateSafe, client_mods,
                                              flowerdp_update, localdp_update)
    from fedattack.testing.cases import case_config

    (mod,) = client_mods(case_config(f"client.defenses=[{name}]"))
    assert isinstance(mod, ZeroUpdateSafe)
    sent = {"w": torch.ones(3, 2), "b": torch.zeros(2)}
    msg = Message(RecordDict({"arrays": ArrayRecord(sent), "config": ConfigRecord({KEY_CLIPPING_NORM: 1.0})}),
                  dst_node_id=1, message_type="train")
    unchanged = lambda m, c: Message(RecordDict({"arrays": ArrayRecord(sent), "metrics": MetricRecord({"n": 1})}),
                                     reply_to=m)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ZeroDivisionError):  # Flower's own mod, unwrapped
        mod.mod(msg, ctx, unchanged)
    got = mod(msg, ctx, unchanged).content["arrays"].to_numpy_ndarrays()
    moved = max(float(np.abs(g - s.numpy()).max()) for g, s in zip(got, sent.values()))
    assert moved == 0.0 if name == "flowerdp" else moved > 0  # clipping leaves it; localdp's noise is still added
    model = torch.nn.Linear(3, 2)
    zero = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    dctx = DefenseContext(model=model, generator=torch.Generator().manual_seed(0))
    out = (flowerdp_update(zero, FlowerDPParams(), dctx) if name == "flowerdp"
           else localdp_update(zero, LocalDPParams(), dctx))
    assert (_norm(out) == 0) == (name == "flowerdp")


def test_dpsgd_client_app_reports_epsilon_per_round_and_total(small_cfg, flower_task):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from opacus.accountants import RDPAccountant

    from fedattack.client.app import make_client_app

    cfg = small_cfg("client.defenses=[dpsgd]", "dpsgd.noise_multiplier=1.3")
    app = make_client_app(cfg)
    exp = build(cfg)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    totals = []
    for rnd in (1, 2):
        msg = Message(RecordDict({"arrays": ArrayRecord(exp.initial_model().state_dict()),
                                  "config": ConfigRecord({"server-round": rnd})}),
                      dst_node_id=1, message_type="train")
        m = dict(app(msg, ctx).content["metrics"])
        totals.append(m["epsilon_total"])
    acc = RDPAccountant()
    for _ in range(2 * int(m["dp_steps"])):
        acc.step(noise_multiplier=1.3, sample_rate=m["dp_sample_rate"])
    assert totals[0] == pytest.approx(m["epsilon"])
    assert totals[1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_flowerdp_server_wraps_strategy_adds_noise_and_accounts(small_cfg, flower_task):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
    from opacus.accountants import RDPAccountant

    from fedattack.server.strategies import build_strategy

    cfg_args = ("client.defenses=[flowerdp]", "flowerdp.noise_multiplier=0.8", "flowerdp.clipping_norm=0.5",
                "fl.num_clients=4", "fl.clients_per_round=2")
    cfg = small_cfg(*cfg_args)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
    eps = []

    def replies():
        return [Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(20000)}),
                                    "metrics": MetricRecord({"num-examples": 4})}),
                        dst_node_id=1, message_type="train") for _ in range(2)]

    for rnd in (1, 2, 3):
        arrays, metrics = strategy.aggregate_train(rnd, replies())
        eps.append(metrics["flowerdp_epsilon"])
    noise = arrays.to_torch_state_dict()["w"]
    # the run's seed fixes the noise (it drew from NumPy's unseeded global generator): the same
    # round again gives the same aggregate, another round or seed another
    again = build_strategy(cfg).aggregate_train(3, replies())[0].to_torch_state_dict()["w"]
    other = build_strategy(cfg).aggregate_train(2, replies())[0].to_torch_state_dict()["w"]
    reseeded = build_strategy(small_cfg(*cfg_args, "seed=7")).aggregate_train(3, replies())[0]
    assert torch.equal(noise, again) and not torch.equal(noise, other)
    assert not torch.equal(noise, reseeded.to_torch_state_dict()["w"])
    assert abs(float(noise.std()) / (0.8 * 0.5 / 2) - 1) < 0.03  # Flower's std: z * C / clients per round
    acc = RDPAccountant()
    for _ in range(3):
        acc.step(noise_multiplier=0.8, sample_rate=1.0)
    # Opacus's RDP analysis; Flower's own RdpAccountant (flwr[dp]) agrees within 1e-3 (its order grid differs)
    assert eps[2] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    assert eps[0] < eps[1] < eps[2]
    assert not isinstance(build_strategy(small_cfg()), DifferentialPrivacyClientSideFixedClipping)


def test_mixup_partners_come_from_the_client_dataset(small_cfg):
    from fedattack.defenses.mixup import MixupParams, mixup_batch

    exp = build(small_cfg())
    t = exp.train.targets
    part = np.asarray([*np.flatnonzero(t == 0)[:5], *np.flatnonzero(t == 1)[:5]])
    x, y = exp.train.get(part[:1])  # a one-image round still gets mixed
    ctx = _ctx(images=x, labels=y, num_classes=2, dataset=exp.train, partition=part)
    mixed = [mixup_batch(x, y, MixupParams(alpha=1.0), ctx) for _ in range(6)]
    assert any(not torch.allclose(xm, x) for xm, _ in mixed)
    assert any(bool(((ym > 0.05) & (ym < 0.95)).any()) for _, ym in mixed)


@pytest.mark.parametrize("defenses, variants", [("[]", [False]), ("[gaussian]", [False]),
                                                ("[clip,gaussian]", [False, True])])
def test_adaptive_attacks_run_only_where_a_defense_in_force_has_a_model_to_apply(defenses, variants):
    from fedattack import config as fconfig
    from fedattack.server.audit import Auditor, experiment_plan

    cfg = fconfig.load(None, [f"client.defenses={defenses}", "model.name=mlp", "audit.attacks=[idlg,invgrad]",
                              "audit.adaptive=both"])
    auditor = Auditor(experiment_plan(build(cfg)), out_dir=None)
    assert auditor.variants("invgrad") == variants and auditor.variants("idlg") == [False]
    said: list[str] = []
    auditor.on_note = said.append
    with auditor.session():
        pass
    if variants == [False]:  # the same attack twice under two names would double the cost and show nothing
        assert said == [f"audit.adaptive=both: no defense in force has a model an adaptive attack could apply (those "
                        f"that do: {', '.join(n for n in DEFENSES.names() if DEFENSES.get(n).adapt)}), so invgrad "
                        "runs once, as the plain attack."]
        assert "clip" in said[0] and "prune" in said[0]
    else:
        assert said == []


def test_under_secagg_the_adaptive_note_speaks_only_of_attacks_that_run_on_sums():
    from fedattack import config as fconfig
    from fedattack.server.audit import Auditor, experiment_plan

    cfg = fconfig.load(None, ["client.defenses=[secagg]", "model.name=mlp", "audit.attacks=[idlg,invgrad,cpa]",
                              "audit.adaptive=both"])
    auditor = Auditor(experiment_plan(build(cfg)), out_dir=None)
    said: list[str] = []
    auditor.on_note = said.append
    with auditor.session(scope="aggregate"):
        pass
    assert any("idlg, invgrad" in s and "do not run" in s for s in said), said  # the scope note
    assert not any("runs once, as the plain attack" in s for s in said), said  # invgrad never runs at all


@pytest.mark.parametrize("steps", [1, 3])
def test_the_client_apps_audit_record_counts_the_steps_it_trained(small_cfg, flower_task, steps):
    # the audit warns where a client drew another number of batches than the replayed steps:
    # the built-in ClientApp records its samples in one call, standing for every step it took
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedattack.client.app import make_client_app
    from fedattack.client.record import AUDIT_KEY

    cfg = small_cfg(f"client.local_steps={steps}", "client.batch_size=2")
    sent = build(cfg).initial_model().state_dict()
    msg = Message(RecordDict({"arrays": ArrayRecord(sent), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = make_client_app(cfg)(msg, ctx)
    assert not reply.has_error(), reply.error
    assert reply.content[AUDIT_KEY]["batches"] == steps == reply.content["metrics"]["local_steps"]


def test_flowerdp_says_its_noise_is_not_what_an_audit_of_updates_faces(tmp_path, capsys):
    """The console and the report named flowerdp(noise_multiplier=1.0, ...) as in force while
    rgap recovered the image at 50 dB, the noise being added to the aggregate only."""
    from fedattack.cli import main

    code = main(["attack", "simulations/dlg_zhu2019.yaml", "client.defenses=[flowerdp]", "audit.attacks=[rgap]",
                 "--out", str(tmp_path / "run"), "--quiet"])
    says = "the attacks face its clipping alone (clipping_norm)"
    assert code == 0 and "note: flowerdp: central DP" in capsys.readouterr().out.replace("\n", " ")
    assert says in (tmp_path / "run" / "report.html").read_text().replace("&#x27;", "'")
