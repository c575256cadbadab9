"""ggl, bayes, seethrough, grnn and `fedattack train-generator` on tiny fixed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedattack import config as fconfig
from fedattack.attacks import ATTACKS, AttackContext
from fedattack.cli import main
from fedattack.errors import ConfigError
from fedattack.metrics import score
from fedattack.threat import DefenseSetting, Observation, Protocol, Truth
from fedattack.testing.cases import case_config

# -- helpers ----------------------------------------------------------------------------

def _observe(overrides: list[str], indices: list[int], noise: tuple[str, float] | None = None,
             warm_bn: bool = False, seed: int = 0) -> tuple[Observation, Truth]:
    """A client update over `indices` (one local step), with noise we add in gradient units."""
    from fedattack.client.train import local_train
    from fedattack.experiment import build
    from fedattack.models import float_params

    cfg = case_config("client.local_steps=1", f"client.batch_size={len(indices)}", *overrides)
    exp = build(cfg)
    model = exp.initial_model()
    if warm_bn:  # a global model whose BatchNorm statistics reflect the population
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        with torch.no_grad():
            model.train()
            model(exp.train.get(range(len(exp.train)))[0])
        for m in bns:
            m.momentum = 0.1
    sent = {k: v.detach().clone() for k, v in {**dict(model.state_dict()), **float_params(model)}.items()}
    names = [n for n, _ in model.named_parameters()]
    res = local_train(model, exp.train, np.asarray(indices), cfg, rnd=1, client=0)
    lr = cfg.client.lr
    update = {k: res.update[k].float() for k in names}
    defenses = ()
    if noise is not None:
        kind, s = noise
        gen = torch.Generator().manual_seed(1234 + seed)
        for k in names:
            if kind == "gaussian":
                z = torch.randn(update[k].shape, generator=gen) * s
            else:
                u = torch.rand(update[k].shape, generator=gen).clamp(1e-7, 1 - 1e-7) - 0.5
                z = -s * torch.sign(u) * torch.log1p(-2 * u.abs())
            update[k] = update[k] - lr * res.steps * z
        defenses = (DefenseSetting(kind, {"sigma": s} if kind == "gaussian" else {"scale": s}),)
    glob = {k: sent[k].float() for k in names}
    protocol = Protocol(lr=lr, local_steps=res.steps, local_epochs=1, batch_size=len(indices),
                        num_examples=res.num_examples, defenses=defenses)
    obs = Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update,
                      protocol=protocol, buffers={k: v for k, v in sent.items() if k not in glob})
    return obs, exp.train.truth(res.indices)


def _run(name: str, obs: Observation, params, adaptive: bool = False, seed: int = 0):
    return ATTACKS.get(name)(obs, params, AttackContext(seed=seed, adaptive=adaptive))


def _tiny_generator(path, latent_dim: int = 8, size: int = 16):
    """An untrained generator with a widened output layer, so its images differ strongly."""
    from fedattack.models.generator import Generator, save_generator

    torch.manual_seed(0)
    gen = Generator(latent_dim, 1, size, 8).eval()
    with torch.no_grad():
        gen.blocks[-2].weight.mul_(6)
    save_generator(path, gen, {"arch": "dcgan", "latent_dim": latent_dim, "channels": 1, "image_size": size,
                               "width": 8})
    return gen


def _generated_target(gen, seed: int = 1) -> tuple[Observation, Truth, torch.Tensor]:
    """The gradient of one image the generator itself produced (LeNet-ReLU, 16 px)."""
    from fedattack.experiment import build
    from fedattack.models.generator import to_pixels

    cfg = case_config("data.image_size=16", "model.activation=relu")
    exp = build(cfg)
    model = exp.initial_model()
    z = torch.randn(2, gen.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        px = to_pixels(gen(z))
    x, y = exp.train.spec.normalize(px[:1]), torch.tensor([1])
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    update = {k: -0.1 * g for k, g in zip(glob, grads)}
    obs = Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update,
                      protocol=Protocol(lr=0.1, local_steps=1, local_epochs=1, batch_size=1, num_examples=1))
    other = exp.train.spec.normalize(px[1:])  # another sample of the same generator
    return obs, Truth(images=x, labels=y), other


# -- the simulated client update ---------------------------------------------------------

@pytest.mark.parametrize("momentum, steps, n, b, epochs", [(0.0, 2, 4, 2, 1), (0.9, 3, 4, 2, 1), (0.0, 4, 3, 2, 2)])
def test_trial_update_matches_real_local_sgd(momentum, steps, n, b, epochs):
    """The attacks' simulated update (BatchNorm in training mode, momentum, step and epoch
    schedules) equals what torch.optim.SGD does on the same samples."""
    from torch.func import vmap

    from fedattack.attacks.engine import schedule, trial_update
    from fedattack.experiment import build

    exp = build(case_config("data.image_size=16", "model.name=convnet", "model.width=4"))
    model = exp.initial_model().train()
    x, y = exp.train.get(range(n))
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    batches = schedule(n, b, steps if epochs == 1 else epochs * -(-n // b), epochs)
    for idx in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    update = {k: v.detach() - glob[k] for k, v in model.named_parameters()}
    obs = Observation(model=exp.model_spec, data=exp.train.spec, global_params=glob, update=update, buffers=buffers,
                      protocol=Protocol(lr=0.1, local_steps=len(batches), local_epochs=epochs, batch_size=b,
                                        num_examples=n, momentum=momentum))
    before = {k: v.clone() for k, v in obs.buffers.items()}
    trial = trial_update(obs)
    observed = obs.gradient_estimate()
    vmapped = {k: v[0] for k, v in vmap(trial)(x[None], y[None]).items()}  # torch.func's path
    for replayed in (trial(x, y), vmapped):  # plain autograd's path, then torch.func's
        assert all(torch.allclose(replayed[k], observed[k], atol=1e-6) for k in observed)
    assert before and all(torch.equal(before[k], obs.buffers[k]) for k in before)  # BatchNorm stats untouched


# -- train-generator --------------------------------------------------------------------

def test_train_generator_command_writes_a_loadable_checkpoint(tmp_path):
    from fedattack.models.generator import load_generator, to_pixels

    out = tmp_path / "gen.pt"
    rc = main(["train-generator", "audit.attacks=[]", "data.image_size=16", "--labels", "1", "--exclude", "1,3",
               "--epochs", "2", "--width", "8", "--latent-dim", "8", "--batch-size", "16", "--out", str(out),
               "--quiet"])
    assert rc == 0 and out.is_file()
    gen, meta = load_generator(out, "ggl.generator")
    assert (meta["latent_dim"], meta["channels"], meta["image_size"]) == (8, 1, 16)
    assert meta["excluded"] == [1, 3] and meta["labels"] == [1]
    assert meta["num_images"] == 78  # the 80 training faces minus two
    with torch.no_grad():
        x = to_pixels(gen(torch.randn(3, 8)))
    assert x.shape == (3, 1, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    ckpt = torch.load(out, weights_only=True)  # plain types and tensors only
    assert set(ckpt) == {"meta", "state_dict"}


@pytest.mark.parametrize("args, field", [
    (["--epochs", "0"], "--epochs"),
    (["--labels", "7"], "--labels"),
    (["--exclude", "x"], "--exclude"),
    (["--exclude", "100000"], "--exclude"),
    (["--split", "test", "--exclude", "1"], "--exclude"),
    (["--loss", "vae"], "--loss"),
    (["--threads", "0"], "--threads"),
    (["data.name=nope"], "data.name"),
])
def test_train_generator_bad_input_is_one_line_exit_2(tmp_path, capsys, args, field):
    items = [a for a in args if "=" in a and not a.startswith("-")]
    options = [a for a in args if a not in items]
    rc = main(["train-generator", "audit.attacks=[]", *items, "--out", str(tmp_path / "g.pt"), "--quiet", *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and field in err[0]
    assert not (tmp_path / "g.pt").exists()


def test_missing_generator_is_a_config_error_naming_the_field(tmp_path):
    from fedattack.models.generator import load_generator

    with pytest.raises(ConfigError, match="ggl.generator"):
        fconfig.load(None, ["audit.attacks=[ggl]"])
    with pytest.raises(ConfigError, match="ggl.generator.*not found"):
        fconfig.load(None, ["audit.attacks=[ggl]", f"ggl.generator={tmp_path / 'none.pt'}"])
    # a section of an attack that does not run needs no checkpoint: a shared config narrowed to other attacks
    assert fconfig.load(None, ["audit.attacks=[idlg]", "ggl.iterations=10"]).attack("ggl").iterations == 10
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="ggl.generator.*not a fedattack generator"):
        load_generator(bad, "ggl.generator")


def test_a_configured_generator_reaches_the_audited_run(tmp_path):
    """`fedattack run` hands AuditStrategy each attack's parameters as built: a ggl with its
    checkpoint is checked as configured, not as the defaults (which name no checkpoint)."""
    from flwr.serverapp.strategy import FedAvg

    from fedattack import AuditStrategy, TrainingProtocol

    _tiny_generator(tmp_path / "g.pt")
    cfg = fconfig.load(None, ["audit.attacks=[ggl]", f"ggl.generator={tmp_path / 'g.pt'}", "ggl.budget=7"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2))
    strategy = AuditStrategy(FedAvg(), model=model, protocol=TrainingProtocol(lr=0.1, local_steps=1, batch_size=1),
                             attacks={"ggl": cfg.attack("ggl")}, out_dir=tmp_path / "run")
    assert strategy.auditor.plan.attacks["ggl"].budget == 7
    # trained on 1x16x16 images, used on 1x16x16: nothing to say; on 3x32x32 images: a note before round 1
    assert strategy.auditor.notes == []
    other = AuditStrategy(FedAvg(), model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)),
                          protocol=TrainingProtocol(lr=0.1, local_steps=1, batch_size=1),
                          attacks={"ggl": cfg.attack("ggl")}, out_dir=tmp_path / "run2")
    assert other.auditor.notes == ["ggl's generator was trained at 1x16x16; this run's images are 3x32x32: its images "
                                   "are converted and resized to fit, a weaker prior than one trained on images like "
                                   "the clients'"]


@pytest.mark.parametrize("item", ["ggl.optimizer=sgd", "ggl.budget=0", "bayes.likelihood=huber",
                                  "bayes.lr_decay=2", "seethrough.group_size=0", "seethrough.output=median",
                                  "grnn.wd=sliced", "grnn.labels=guess"])
def test_bad_parameters_name_the_field(item):
    with pytest.raises(ConfigError, match=item.split("=")[0].replace(".", r"\.")):
        fconfig.load(None, ["audit.attacks=[]", item])


# -- ggl --------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["cmaes", "adam"])
def test_ggl_finds_the_latent_of_a_generated_target(tmp_path, optimizer):
    """Self-consistency: the private image is a sample of the generator itself."""
    from fedattack.attacks.ggl import GGLParams

    gen = _tiny_generator(tmp_path / "g.pt")
    obs, truth, other = _generated_target(gen)
    params = GGLParams(generator=str(tmp_path / "g.pt"), optimizer=optimizer, budget=800, batch=40,
                       iterations=120, kl=0.0)
    rec = _run("ggl", obs, params)
    s = score(rec, truth, obs.data)
    chance = score(type(rec)(images=other, labels=truth.labels), truth, obs.data)
    assert s.label_acc == 1.0
    assert s.psnr >= 25.0 and s.psnr >= chance.psnr + 8.0, (s.psnr, chance.psnr)


def test_ggl_adaptive_applies_known_defense_hooks_and_skips_unknown_ones(tmp_path):
    from fedattack.attacks.base import NoParams
    from fedattack.attacks.ggl import GGLParams
    from fedattack.defenses import DEFENSES, DefenseSpec

    calls = []

    def adapt(trial, observed, params, scale=None):
        calls.append(1)
        return {k: v * (observed[k] != 0) for k, v in trial.items()}

    gen = _tiny_generator(tmp_path / "g.pt")
    obs, truth, _ = _generated_target(gen)
    from dataclasses import replace

    obs = replace(obs, protocol=replace(obs.protocol, defenses=(
        DefenseSetting("test-mask", {}), DefenseSetting("not-a-registered-defense", {"x": 1}))))
    params = GGLParams(generator=str(tmp_path / "g.pt"), budget=80, batch=40, kl=0.0)
    spec = DefenseSpec(name="test-mask", params=NoParams, paper="test", where="update", adapt=adapt)
    with DEFENSES.temporarily(spec.name, spec):  # other tests enumerate the registry
        _run("ggl", obs, params, adaptive=False)
        assert calls == []
        rec = _run("ggl", obs, params, adaptive=True)
        # the hook runs on every evaluated batch of candidates (vmapped: one call per batch of 40)
        assert len(calls) >= 80 // 40 and rec.images.shape == truth.images.shape
    assert "test-mask" not in DEFENSES.names()


# -- bayes ------------------------------------------------------------------------------

def test_bayes_likelihood_follows_the_known_defense():
    from fedattack.attacks.bayes import BayesParams, _noise_model, kept_entries, neg_log_likelihood

    def obs_with(*defenses):
        return Observation(model=None, data=None, global_params={}, update={},
                           protocol=Protocol(lr=1.0, local_steps=1, local_epochs=1, batch_size=1, num_examples=1,
                                             defenses=tuple(defenses)))

    p = BayesParams()
    assert _noise_model(obs_with(DefenseSetting("gaussian", {"sigma": 0.3})), p) == ("gaussian", 0.3)
    assert _noise_model(obs_with(DefenseSetting("laplacian", {"scale": 0.1})), p) == ("laplacian", 0.1)
    assert _noise_model(obs_with(), p) == ("gaussian", p.sigma)
    dp = DefenseSetting("dpsgd", {"noise_multiplier": 1.0, "max_grad_norm": 2.0})
    assert _noise_model(obs_with(dp), p) == ("gaussian", pytest.approx(2.0))  # z C / (B sqrt(steps)), B = 1
    assert _noise_model(obs_with(DefenseSetting("laplacian", {"scale": 0.1})), BayesParams(likelihood="l2"))[0] == "l2"
    target = {"w": torch.tensor([1.0, 0.0, -2.0, 0.0])}
    trial = {"w": torch.tensor([0.0, 5.0, -1.0, 5.0])}
    assert float(neg_log_likelihood(trial, target, "laplacian", 0.5)) == pytest.approx((2 + 10 + 2 + 10) / 4)
    assert float(neg_log_likelihood(trial, target, "gaussian", 1.0)) == pytest.approx((1 + 25 + 1 + 25) / 2 / 4)
    mask = kept_entries(obs_with(DefenseSetting("prune", {"rate": 0.5})), target)
    assert mask["w"].tolist() == [1, 0, 1, 0]  # pruned (observed zero) entries carry no evidence
    assert float(neg_log_likelihood(trial, target, "laplacian", 0.5, mask)) == pytest.approx((2 + 2) / 2)
    assert kept_entries(obs_with(DefenseSetting("gaussian", {"sigma": 0.1})), target) is None


def test_bayes_prior_under_laplacian_noise_improves_the_map_estimate():
    """DLG's setting at 16 px, Laplacian noise b = 0.1 in gradient units: the TV prior of the
    posterior adds several dB over the likelihood alone (both in one batched run)."""
    from fedattack.attacks.bayes import BayesParams, optimize

    params = BayesParams(iterations=500, lr_decay=0.995)
    gains, with_prior = [], []
    for v in (7, 150):
        obs, truth = _observe(["model.init=uniform", "data.image_size=16"], [v], ("laplacian", 0.1))
        images, losses = optimize(obs, params, AttackContext(seed=0), truth.labels, [0.0, 0.1])
        p0, p1 = (score(type(truth)(images=img, labels=truth.labels), truth, obs.data).psnr for img in images)
        gains.append(p1 - p0)
        with_prior.append(p1)
    assert np.mean(gains) >= 3.0, gains
    assert np.mean(with_prior) >= 13.0, with_prior
    rec = _run("bayes", obs, BayesParams(iterations=20))
    assert rec.info["likelihood"] == "laplacian" and rec.info["noise_scale"] == 0.1


def test_bayes_tuning_keeps_the_best_weight_of_its_grid():
    from fedattack.attacks.bayes import BayesParams, tune_prior_weight

    heldout = [_observe(["model.init=uniform", "data.image_size=16"], [12], ("laplacian", 0.1))]
    best, tried = tune_prior_weight(heldout, BayesParams(iterations=150, lr_decay=0.99), start=0.4, stop=0.1,
                                    refine=3)
    weights = [w for w, _ in tried]
    assert weights[:3] == pytest.approx([0.4, 0.2, 0.1])  # the halving grid, then the finer scan
    assert len(tried) > 3 and best in weights
    assert dict(tried)[best] == max(v for _, v in tried)


# -- seethrough -------------------------------------------------------------------------

def test_seethrough_priors_beat_plain_gradient_matching():
    """ConvNet with BatchNorm (width 8, 16 px), a batch of 4 (two faces, two non-faces), the
    sent model's BatchNorm statistics are the population's: the BN + TV + group priors beat
    the same optimization without them."""
    from fedattack.attacks.seethrough import SeeThroughParams

    obs, truth = _observe(["model.name=convnet", "model.width=8", "model.activation=relu", "data.image_size=16"],
                          [7, 20, 130, 150], warm_bn=True)
    full = score(_run("seethrough", obs, SeeThroughParams(iterations=300, group_size=8)), truth, obs.data)
    plain = score(_run("seethrough", obs, SeeThroughParams(iterations=300, bn=0, tv=0, group_size=1, noise=0)),
                  truth, obs.data)
    assert full.label_acc == 1.0
    # measured over seeds 0-3: with priors 12.1-14.6 dB, without 10.0-10.8 dB
    assert full.psnr >= plain.psnr + 1.5 and full.psnr >= 12.0, (full.psnr, plain.psnr)


def test_seethrough_matches_the_batch_statistics_a_client_returned():
    """A one-step client that sends its BatchNorm running statistics back gives away its batch's
    own statistics: the prior's targets are the true images' at the global weights; without
    returned statistics they are the ones the server sent."""
    from dataclasses import replace

    from fedattack.attacks.engine import functional_model, recording_inputs
    from fedattack.attacks.seethrough import bn_targets
    from fedattack.testing.cases import observed_update

    obs, truth = observed_update("data.name=photos", "model.name=convnet", "model.activation=relu", "model.width=8",
                                 "client.batch_size=2", "client.local_steps=1")
    fm = functional_model(obs)
    told, stats = bn_targets(obs, fm)
    with recording_inputs(fm.module, list(told)) as record:
        fm.logits(fm.params, truth.images)
    assert len(told) >= 2 and stats is not None
    for name, (mean, var) in told.items():
        dims = [0, *range(2, record[name].dim())]
        torch.testing.assert_close(mean, record[name].mean(dims), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(var, record[name].var(dims), atol=1e-4, rtol=1e-3)
    sent, none = bn_targets(replace(obs, returned_buffers={}), fm)
    assert sent.keys() == told.keys() and none is None
    for name, (mean, var) in sent.items():
        assert torch.equal(mean, obs.buffers[f"{name}.running_mean"].float())
        assert torch.equal(var, obs.buffers[f"{name}.running_var"].float())


# -- grnn -------------------------------------------------------------------------------

def test_grnn_recovers_image_and_label_from_scratch():
    """DLG's setting at 16 px (LeNet, sigmoid, U(-0.5, 0.5)), one face: the generator trained
    on the fly recovers the image and its label."""
    from fedattack.attacks.grnn import GRNNParams

    obs, truth = _observe(["model.init=uniform", "data.image_size=16"], [7])
    rec = _run("grnn", obs, GRNNParams(iterations=800))
    s = score(rec, truth, obs.data)
    assert s.label_acc == 1.0
    assert s.psnr >= 20.0 and s.ssim >= 0.6, (s.psnr, s.ssim)
