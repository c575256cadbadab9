"""Calibration: the server simulates its own protocol on data it holds and tunes an attack there."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from fedattack.attacks import ATTACKS, AttackContext
from fedattack.attacks import calibrate as calibrate_module
from fedattack.attacks.base import AttackSpec, LogRange
from fedattack.attacks.calibrate import (calibrate, calibration_key, case_count, dominates, gain_lower_bound, improves,
                                         band_words, simulate_cases, size_band)
from fedattack.defenses.clipping import global_norm
from fedattack.cli import main
from fedattack.threat import DefenseSetting, Reconstruction
from fedattack.testing.cases import observed_update


def _server_data(n: int = 24, seed: int = 0):
    """Images the server holds (model-input space) and their labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, 32, 32), generator=gen) * 0.5, torch.randint(0, 2, (n,), generator=gen)


def test_simulated_cases_follow_the_protocol_and_its_update_defenses():
    obs, _ = observed_update("seed=0", "client.local_steps=2", "client.batch_size=2")
    x, y = _server_data()
    clipped = replace(obs, protocol=replace(obs.protocol, defenses=(DefenseSetting("clip", {"bound": 0.01}),
                                                                   DefenseSetting("dpsgd", {}))))
    sim = simulate_cases(clipped, x, y, count=3, seed=1)
    assert len(sim.cases) == 3 and sim.unmodelled == ("dpsgd",)  # DP-SGD acts inside training
    scale = obs.protocol.lr * obs.protocol.local_steps
    for case_obs, truth in sim.cases:
        assert len(truth.labels) == obs.protocol.num_examples
        assert float(global_norm(case_obs.update)) <= 0.01 * scale * (1 + 1e-5)  # clipped in gradient units
        assert case_obs.global_params is clipped.global_params  # the round's global model
    again = simulate_cases(clipped, x, y, count=3, seed=1)
    assert all(torch.equal(a[1].images, b[1].images) for a, b in zip(sim.cases, again.cases))  # seeded


@dataclass
class _FlatParams:
    level: float = 0.9  # brightness of the flat guess, in pixels


def _flat(obs, params: _FlatParams, ctx) -> Reconstruction:
    n = obs.protocol.num_examples
    pixels = torch.full((n, *obs.data.shape), params.level)
    return Reconstruction(images=obs.data.normalize(pixels), labels=torch.zeros(n, dtype=torch.long))


def _dim_cases():
    """Two simulated one-step updates of 8 dark images (pixels 0.1-0.5, mean 0.3)."""
    obs, _ = observed_update("seed=0", "client.local_steps=1", "client.batch_size=2")
    x = obs.data.normalize(torch.rand((16, 1, 32, 32), generator=torch.Generator().manual_seed(0)) * 0.4 + 0.1)
    return simulate_cases(obs, x, torch.zeros(16, dtype=torch.long), count=2, seed=0)


def test_calibration_tunes_on_its_own_cases_and_keeps_the_defaults_first():
    sim = _dim_cases()
    spec = AttackSpec("test-flat", _flat, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        once = calibrate("test-flat", _FlatParams(), sim, budget=1, ctx=AttackContext(seed=0))
        assert once.params == _FlatParams() and once.tuned == {} and len(once.trials) == 1
        tuned = calibrate("test-flat", _FlatParams(), sim, budget=12, ctx=AttackContext(seed=0))
    # the images' mean brightness is 0.3: the best flat guess sits near it, far from 0.9
    assert abs(tuned.params.level - 0.3) < abs(0.9 - 0.3) / 2
    assert tuned.best_psnr >= tuned.default_psnr + 3.0
    assert tuned.trials[0]["values"] == {"level": 0.9}  # the configured value is tried first
    assert tuned.record()["tuned"] == tuned.tuned and np.isfinite(tuned.record()["best_psnr"])


def test_calibration_spends_its_budget_on_settings_it_has_not_scored():
    obs, _ = observed_update("seed=0", "client.local_steps=1", "client.batch_size=2")
    x = obs.data.normalize(torch.rand((16, 1, 32, 32), generator=torch.Generator().manual_seed(0)))
    sim = simulate_cases(obs, x, torch.zeros(16, dtype=torch.long), count=2, seed=0)
    runs = []

    def counted(obs, params, ctx):
        runs.append(params.level)
        return _flat(obs, params, ctx)

    spec = AttackSpec("test-count", counted, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        for seed in (0, 1):
            runs.clear()
            cal = calibrate("test-count", _FlatParams(), sim, budget=6, ctx=AttackContext(seed=seed))
            levels = [t["values"]["level"] for t in cal.trials]
            assert len(levels) <= 6 and len(runs) == 2 * len(levels)  # each scored setting: one run per case
            assert len(set(np.round(levels, 9))) == len(levels)  # none scored twice
            assert len(levels) >= 5  # the configured value, and at least 4 fresh settings


def _dark_then_bright(seed: int):
    """Two simulated one-step updates of dark images (pixels 0.2-0.4) to tune on, two more of
    dark images to confirm on, and two of bright ones (0.85-0.95) that a choice tuned on dark
    images loses on."""
    obs, _ = observed_update("seed=0", "client.local_steps=1", "client.batch_size=2")
    gen = torch.Generator().manual_seed(seed)
    dark = obs.data.normalize(torch.rand((32, 1, 32, 32), generator=gen) * 0.2 + 0.2)
    bright = obs.data.normalize(torch.rand((16, 1, 32, 32), generator=gen) * 0.1 + 0.85)
    zeros = torch.zeros(32, dtype=torch.long)
    tune, like = simulate_cases(obs, dark, zeros, count=4, seed=0).split(2)
    return tune, like, simulate_cases(obs, bright, zeros[:16], count=2, seed=0)


def test_the_winner_is_used_only_where_it_also_wins_on_fresh_cases():
    # tuned on dark images the flat guess moves to their brightness; on fresh cases that are as
    # dark it is confirmed, on fresh cases as bright as the configured guess it loses and the
    # configured value stays
    tune, like, unlike = _dark_then_bright(seed=1)
    spec = AttackSpec("test-flat", _flat, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        kept = calibrate("test-flat", _FlatParams(), tune, budget=10, ctx=AttackContext(seed=0), held_out=like)
        lost = calibrate("test-flat", _FlatParams(), tune, budget=10, ctx=AttackContext(seed=0), held_out=unlike)
    assert kept.held_out["confirmed"] and kept.params.level < 0.6 and kept.tuned
    assert not lost.held_out["confirmed"] and lost.params == _FlatParams() and lost.tuned == {}
    assert lost.best_psnr == lost.default_psnr and len(lost.held_out["chosen"]) == 2
    assert lost.record()["held_out"]["confirmed"] is False


@dataclass
class _SlowParams:
    iterations: int = 50  # the flat guess walks from 0.9 towards 0.3 over its first 200 iterations
    restarts: int = 1  # (`_starts`: over its first 4 restarts instead)


def _slow(obs, params: _SlowParams, ctx) -> Reconstruction:
    return _flat(obs, _FlatParams(level=0.9 - 0.6 * min(params.iterations, 200) / 200), ctx)


def test_calibration_doubles_the_iterations_while_they_pay_and_within_the_factor():
    sim = _dim_cases()
    spec = AttackSpec("test-slow", _slow, _SlowParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        runs = {f: calibrate("test-slow", _SlowParams(), sim, budget=4, ctx=AttackContext(seed=0), iteration_factor=f)
                for f in (1, 2, 16)}
    assert runs[1].params == _SlowParams() and runs[1].tuned == {} and len(runs[1].trials) == 1
    assert runs[2].params.iterations == 100 and runs[2].tuned == {"iterations": 100}
    # 50 -> 100 -> 200 pay; 400 does no better than 200, so the search stops there, short of 16x
    # (800), and keeps the cheaper of the two
    assert runs[16].params.iterations == 200 and runs[16].tuned == {"iterations": 200}
    assert [t["values"] for t in runs[16].trials[1:]] == [{"iterations": n} for n in (100, 200, 400)]
    assert runs[16].trials[-1]["psnr"] == runs[16].trials[-2]["psnr"]
    assert runs[16].best_psnr > runs[2].best_psnr > runs[2].default_psnr


def test_a_longer_iteration_count_is_kept_only_where_it_also_wins_on_fresh_cases():
    # more iterations walk the flat guess towards 0.3: that wins on dark images, and loses on
    # fresh cases as bright as the configured guess, where the configured count stays
    tune, like, unlike = _dark_then_bright(seed=2)
    spec = AttackSpec("test-slow", _slow, _SlowParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        kept, lost = (calibrate("test-slow", _SlowParams(), tune, budget=1, ctx=AttackContext(seed=0),
                                held_out=fresh, iteration_factor=2) for fresh in (like, unlike))
    assert kept.params.iterations == 100 and kept.tuned == {"iterations": 100}
    assert kept.held_out["iterations"]["confirmed"] and kept.best_psnr > kept.default_psnr
    check = lost.held_out["iterations"]
    assert not check["confirmed"] and check["count"] == 100 and lost.held_out["cases"] == 2
    assert np.mean(check["larger"]) < np.mean(check["given"])  # it did lose there
    assert lost.params == _SlowParams() and lost.tuned == {} and lost.best_psnr == lost.default_psnr
    assert "confirmed" not in lost.held_out  # no tuned value was up for confirmation


@dataclass
class _SwitchParams:
    rebalance: bool = True  # off: the flat guess is dark (0.3), on: bright (0.9)


def _switched(obs, params: _SwitchParams, ctx) -> Reconstruction:
    return _flat(obs, _FlatParams(level=0.9 if params.rebalance else 0.3), ctx)


def test_a_switch_is_flipped_only_where_it_wins_on_the_cases_and_on_fresh_ones():
    tune, like, unlike = _dark_then_bright(seed=3)
    spec = AttackSpec("test-switch", _switched, _SwitchParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        kept, lost = (calibrate("test-switch", _SwitchParams(), tune, budget=1, ctx=AttackContext(seed=0),
                                held_out=fresh) for fresh in (like, unlike))
        bright = calibrate("test-switch", _SwitchParams(rebalance=False), unlike, budget=1, ctx=AttackContext(seed=0))
    assert kept.params.rebalance is False and kept.tuned == {"rebalance": False}
    assert kept.held_out["rebalance"]["confirmed"] and kept.best_psnr > kept.default_psnr + 3
    assert [t["values"] for t in kept.trials[1:]] == [{"rebalance": False}]
    check = lost.held_out["rebalance"]
    assert not check["confirmed"] and np.mean(check["chosen"]) < np.mean(check["given"])
    assert lost.params == _SwitchParams() and lost.tuned == {} and lost.best_psnr == lost.default_psnr
    # without fresh cases the cases alone decide, either way round
    assert bright.params.rebalance is True and bright.tuned == {"rebalance": True} and not bright.held_out


def test_a_switch_that_wins_the_mean_but_not_every_case_is_settled_by_the_fresh_cases():
    # tuned on one dark update (the flip's dark guess gains about 20 dB) and one mid-grey update
    # (it loses about 13): better on the mean, not on every case; fresh dark updates confirm it,
    # and without fresh cases the two cases alone do not
    obs, _ = observed_update("seed=0", "client.local_steps=1", "client.batch_size=2")
    gen = torch.Generator().manual_seed(4)
    dark = obs.data.normalize(torch.rand((24, 1, 32, 32), generator=gen) * 0.2 + 0.2)
    grey = obs.data.normalize(torch.rand((8, 1, 32, 32), generator=gen) * 0.2 + 0.7)
    zeros = torch.zeros(24, dtype=torch.long)
    first, fresh = simulate_cases(obs, dark, zeros, count=3, seed=0).split(1)
    tune = replace(first, cases=first.cases + simulate_cases(obs, grey, zeros[:8], count=1, seed=0).cases)
    spec = AttackSpec("test-switch", _switched, _SwitchParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        kept = calibrate("test-switch", _SwitchParams(), tune, budget=1, ctx=AttackContext(seed=0), held_out=fresh)
        alone = calibrate("test-switch", _SwitchParams(), tune, budget=1, ctx=AttackContext(seed=0))
    flip = kept.trials[1]
    assert flip["values"] == {"rebalance": False} and not flip["improves"]  # it loses the grey case
    assert flip["psnr"] > kept.trials[0]["psnr"] + 2
    assert kept.params.rebalance is False and kept.held_out["rebalance"]["confirmed"]
    assert alone.params == _SwitchParams() and alone.tuned == {} and not alone.held_out


def _uneven(obs, params: _SlowParams, ctx) -> Reconstruction:
    # at 100 iterations one case of two (by the per-case seed) gets worse, the other much better
    level = {50: 0.9, 100: 0.95 if ctx.seed % 2 == 0 else 0.6}.get(params.iterations, 0.3)
    return _flat(obs, _FlatParams(level=level), ctx)


def test_each_iteration_count_is_judged_against_the_configured_one_not_the_step_before():
    sim = _dim_cases()
    spec = AttackSpec("test-uneven", _uneven, _SlowParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        cal = calibrate("test-uneven", _SlowParams(), sim, budget=1, ctx=AttackContext(seed=0), iteration_factor=4)
    doubled, quadrupled = cal.trials[1:]
    assert not doubled["improves"] and quadrupled["improves"]  # 2x loses on one case; 4x wins on both
    assert cal.params.iterations == 200 and cal.tuned == {"iterations": 200}


class _Clock:
    """The clock calibration reads, advanced by the attack below instead of by sleeping: the
    time-out rule is tested on exact run times, whatever the machine's load."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


def _slow_and_costly(obs, params: _SlowParams, ctx) -> Reconstruction:
    _Clock.now += params.iterations * 2e-3  # 100 iterations: 0.2 s a run
    return _slow(obs, params, ctx)


def test_calibration_stretches_no_further_than_half_the_job_time_out_allows(monkeypatch):
    sim = _dim_cases()
    spec = AttackSpec("test-costly", _slow_and_costly, _SlowParams, "test")
    monkeypatch.setattr(calibrate_module, "time", _Clock)
    with ATTACKS.temporarily(spec.name, spec):
        cal = calibrate("test-costly", _SlowParams(), sim, budget=1, ctx=AttackContext(seed=0), iteration_factor=16,
                        job_seconds=0.6)
    # 100 iterations run in about 0.2 s, within half of 0.6; 200 would take 0.4, so it is not tried
    assert cal.params.iterations == 100 and [t["values"] for t in cal.trials[1:]] == [{"iterations": 100}]
    assert 0.2 <= cal.trials[1]["seconds_per_case"] < 0.3


def _starts(obs, params: _SlowParams, ctx) -> Reconstruction:
    return _flat(obs, _FlatParams(level=0.9 - 0.6 * min(params.restarts, 4) / 4), ctx)


def test_calibration_doubles_the_restarts_while_they_pay_after_the_iterations():
    sim = _dim_cases()
    spec = AttackSpec("test-starts", _starts, _SlowParams, "test")
    with ATTACKS.temporarily(spec.name, spec):
        runs = {f: calibrate("test-starts", _SlowParams(), sim, budget=1, ctx=AttackContext(seed=0),
                             iteration_factor=2, restart_factor=f) for f in (1, 16)}
    # more iterations change nothing here, so they are tried once and not kept
    assert runs[1].params == _SlowParams() and runs[1].tuned == {}
    assert [t["values"] for t in runs[1].trials[1:]] == [{"iterations": 100}]
    # 1 -> 2 -> 4 restarts pay; 8 does no better than 4, so the search stops short of 16
    assert runs[16].params.restarts == 4 and runs[16].tuned == {"restarts": 4}
    assert [t["values"] for t in runs[16].trials[2:]] == [{"restarts": n} for n in (2, 4, 8)]
    assert runs[16].best_psnr > runs[16].default_psnr


def test_a_candidate_replaces_the_configured_values_only_where_it_is_no_worse_on_any_case():
    assert dominates([11.0, 9.5], [11.0, 9.0])
    assert not dominates([20.0, 8.9], [11.0, 9.0])  # a better mean bought by losing on one case
    assert not dominates([11.0, 9.0], [11.0, 9.0])  # ties keep the configured values
    assert not dominates([16.018], [16.006]) and not improves([16.02] * 4, [16.0] * 4)  # a gain too small: a tie
    assert dominates([16.06], [16.006])
    # a loss of a hundredth of a dB beside a 2 dB gain is a tie lost, not a case lost
    assert dominates([18.748, 12.01], [16.8, 12.024]) and not dominates([18.748, 11.9], [16.8, 12.024])
    assert not improves([20.0, 8.9], [11.0, 9.0])  # two cases: the t bound says nothing


def test_over_many_cases_a_clear_mean_gain_wins_despite_one_small_loss():
    configured = [15.0, 17.8, 21.7, 13.6, 20.3, 17.9, 15.5, 10.3]
    gains = [4.0, 2.0, 1.9, 4.5, 1.2, 2.2, -0.26, 3.0]
    chosen = [c + g for c, g in zip(configured, gains)]
    assert not dominates(chosen, configured) and improves(chosen, configured)
    assert 0 < gain_lower_bound(chosen, configured) < np.mean(gains)
    # gains that are noise around zero do not pass, nor does one lucky case among losses
    noisy = [c + g for c, g in zip(configured, [3.0, -2.5, 1.0, -1.5, 2.0, -1.0, 0.5, -1.0])]
    lucky = [c + g for c, g in zip(configured, [12.0, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5])]
    assert not improves(noisy, configured) and not improves(lucky, configured)
    assert gain_lower_bound([11.0, 12.0], [10.0, 10.0]) == float("-inf")
    assert gain_lower_bound([11.0] * 4, [10.0] * 4) == 1.0  # identical gains: the gain itself


def test_calibration_key_ignores_the_weights_but_not_the_protocol():
    obs, _ = observed_update("seed=0", "client.local_steps=2", "client.batch_size=2")
    later = replace(obs, global_params={k: v + 1 for k, v in obs.global_params.items()})
    other = replace(obs, protocol=replace(obs.protocol, lr=0.1))
    assert calibration_key("invgrad", obs, False) == calibration_key("invgrad", later, False)
    assert calibration_key("invgrad", obs, False) != calibration_key("invgrad", other, False)
    # clients of 5 to 8 examples share a calibration; 9 is another band
    sized = [replace(obs, protocol=replace(obs.protocol, num_examples=n)) for n in (5, 8, 9)]
    keys = [calibration_key("invgrad", o, False) for o in sized]
    assert keys[0] == keys[1] != keys[2]
    assert [size_band(n) for n in (1, 2, 3, 4, 5, 16, 17)] == [0, 1, 2, 2, 3, 4, 5]
    assert [band_words(n) for n in (1, 2, 3, 8, 9)] == ["1 example", "2 examples", "3-4 examples", "5-8 examples",
                                                        "9-16 examples"]


def test_an_audit_calibrates_before_its_first_jobs_and_records_the_choice(tmp_path):
    # the flat guess's brightness is its one tunable: calibration on the server's own test images
    # moves it from 0.9 towards their mean, and the run records the choice and shows it
    spec = AttackSpec("test-flat", _flat, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        code = main(["attack", "--out", str(tmp_path / "run"), "--quiet", "audit.attacks=[test-flat]",
                     "audit.calibrate=true", "audit.calibration_budget=10", "audit.calibration_cases=1",
                     "client.batch_size=2", "client.local_steps=1", "seed=3"])
    assert code == 0
    import json

    (record,) = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert record["attack"] == "test-flat" and record["trials"][0]["values"] == {"level": 0.9}
    # one case asked for, but a judge holds at least 8 images: 4 simulated clients of 2
    assert record["protocol"]["batch_size"] == 2 and record["cases"] == 4
    assert record["held_out"]["cases"] == 4 and record["held_out"]["confirmed"]  # and confirmed on fresh ones
    assert abs(record["params"]["level"] - 0.9) > 0.2 and record["best_psnr"] > record["default_psnr"] + 1.0
    assert record["data"].startswith("the test split of lfw-subset, ")  # on what it was tuned
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "the test split of lfw-subset" in html


@dataclass
class _LevelSwitchParams:
    level: float = 0.9
    rebalance: bool = True  # off: the flat guess is dark (0.3) whatever its level


def test_the_console_names_each_calibration_stage(tmp_path, capfd):
    def guess(obs, params: _LevelSwitchParams, ctx) -> Reconstruction:
        return _flat(obs, _FlatParams(level=params.level if params.rebalance else 0.3), ctx)

    spec = AttackSpec("test-switch", guess, _LevelSwitchParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        code = main(["attack", "--out", str(tmp_path / "run"), "audit.attacks=[test-switch]", "audit.calibrate=true",
                     "audit.calibration_budget=2", "client.batch_size=2", "client.local_steps=1", "seed=3"])
    captured = capfd.readouterr()
    shown = " ".join((captured.out + captured.err).split())  # rich wraps long lines
    assert code == 0 and "calibrating test-switch: setting 1 of 2 (the configured values):" in shown
    assert "calibrating test-switch: setting 2 of 2:" in shown
    assert "calibrating test-switch: rebalance=False:" in shown and "setting ?" not in shown


def test_a_stopped_attack_command_says_how_many_jobs_it_cancelled(tmp_path, capsys):
    from fedattack import shutdown

    def stopping(obs, params, ctx):
        shutdown.request("SIGINT")
        return _flat(obs, params, ctx)

    spec = AttackSpec("test-stop", stopping, _FlatParams, "test")
    quick = AttackSpec("test-flat", _flat, _FlatParams, "test")  # cancelled, and never left running at exit
    try:
        with ATTACKS.temporarily(spec.name, spec), ATTACKS.temporarily(quick.name, quick):
            main(["attack", "--out", str(tmp_path / "run"), "audit.attacks=[test-stop,test-flat]",
                  "client.batch_size=2", "client.local_steps=1"])
    finally:
        shutdown.reset()
    said = " ".join(capsys.readouterr().out.split())
    import re

    # the stop may land before or after the first job's result is collected: every job is counted once
    found = re.search(r"fedattack: stopped by SIGINT: (\d) finished results? in \S+; (\d) unfinished jobs? cancelled;",
                      said)
    assert found and int(found[1]) + int(found[2]) == 2 and int(found[2]) >= 1, said


def test_a_calibration_judge_holds_at_least_the_images_asked_for():
    assert case_count(2, 1, 8) == 8 and case_count(2, 3, 8) == 3 and case_count(2, 4, 8) == 2
    assert case_count(2, 16, 8) == 2 and case_count(5, 1, 1) == 5


def test_a_stop_request_ends_a_calibration_before_its_next_attack_run(tmp_path):
    # calibration runs the attack dozens of times before the first job; a stop request (SIGINT,
    # SIGTERM) must not wait for all of them: the audit's check ends it before the next run
    from fedattack import shutdown

    calls = []

    def stopping(obs, params, ctx):
        calls.append(params.level)
        shutdown.request("test")
        return _flat(obs, params, ctx)

    spec = AttackSpec("test-stop", stopping, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    try:
        with ATTACKS.temporarily(spec.name, spec):
            code = main(["attack", "--out", str(tmp_path / "run"), "--quiet", "audit.attacks=[test-stop]",
                         "audit.calibrate=true", "audit.calibration_budget=10", "client.batch_size=2",
                         "client.local_steps=1"])
    finally:
        shutdown.reset()
    assert code != 0 and calls == [0.9]  # stopped after the first of 10 x 4 x 2 runs
    assert not (tmp_path / "run" / "leakage.csv").exists() or len((tmp_path / "run" / "leakage.csv").read_text()
                                                                   .splitlines()) <= 1


def test_a_calibration_that_cannot_run_is_recorded_and_the_attack_runs_configured(tmp_path):
    # lfw-subset's test split holds 40 images, for a client of 48: nothing to simulate it with
    spec = AttackSpec("test-flat", _flat, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
    with ATTACKS.temporarily(spec.name, spec):
        code = main(["attack", "--out", str(tmp_path / "run"), "--quiet", "audit.attacks=[test-flat]",
                     "audit.calibrate=true", "client.batch_size=48", "client.local_steps=1"])
    import json

    (record,) = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert code == 0 and "trials" not in record
    assert record["skipped"] == ("calibration simulates clients as large as this one, 48 images, and its data holds "
                                 "40; give it at least 48")
    assert "Calibration was asked for and skipped every time" in (tmp_path / "run" / "report.html").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["calibrate"] is True and "calibrated" not in summary  # asked for, not a claim that it ran
    assert summary["raised"] == []  # and it raised no budget
    assert (tmp_path / "run" / "leakage.csv").read_text().count("test-flat") == 1  # the job ran all the same


def test_a_calibration_whose_every_run_fails_is_skipped_with_the_reason(tmp_path, monkeypatch):
    # a plug-in's bug (a wrong return type, an exception) failed every trial: calibration either
    # crashed the run (AttributeError) or scored each trial 0 dB and reported "calibrated"
    def broken(obs, params, ctx):
        raise RuntimeError("my plug-in's bug")

    monkeypatch.setenv("FEDATTACK_STRICT", "0")  # the jobs' errors are rows, as in a user's run
    for fn, reason in ((broken, "RuntimeError: my plug-in's bug"),
                       (lambda obs, params, ctx: torch.zeros(3), "TypeError: attack 'test-broken' returned Tensor")):
        spec = AttackSpec("test-broken", fn, _FlatParams, "test", tunable=(("level", LogRange(0.05, 0.95)),))
        out = tmp_path / reason[:4]
        with ATTACKS.temporarily(spec.name, spec):
            code = main(["attack", "--out", str(out), "--quiet", "audit.attacks=[test-broken]", "audit.calibrate=true",
                         "audit.calibration_budget=4", "client.batch_size=2", "client.local_steps=1"])
        import json

        (record,) = json.loads((out / "calibration.json").read_text())
        assert code == 0 and "failed on every simulated update" in record["skipped"] and reason in record["skipped"]
        assert "trials" not in record
        assert "error" in (out / "leakage.csv").read_text()  # the job ran configured, and is an error row


def test_the_record_names_the_stretched_iterations_even_where_the_tuned_values_lost():
    from fedattack.results import describe_calibration

    assert describe_calibration({}, {}) == "the configured parameters"
    assert describe_calibration({"tv": 0.0312, "iterations": 2000}, {"confirmed": True}) == "tv=0.0312, iterations=2000"
    # a rejected candidate's values are not in the record; what was chosen after it is
    lost = describe_calibration({"iterations": 2000}, {"confirmed": False})
    assert lost.startswith("the configured parameters (") and lost.endswith("; iterations=2000")
    # a longer count that lost on fresh updates is named as such; the tuned values stand
    longer = {"cases": 2, "confirmed": True, "iterations": {"count": 4000, "confirmed": False}}
    assert describe_calibration({"tv": 0.0312}, longer) == "tv=0.0312 (4000 iterations lost on fresh updates)"
    assert describe_calibration({"iterations": 4000}, {"cases": 2, "iterations": {"count": 4000, "confirmed": True}}) \
        == "iterations=4000"
    # so are more restarts, beside a longer count that won
    both = {"cases": 2, "iterations": {"count": 4000, "confirmed": True}, "restarts": {"count": 4, "confirmed": False}}
    assert describe_calibration({"iterations": 4000}, both) == "iterations=4000 (4 restarts lost on fresh updates)"
    # and a switch, kept or lost on fresh updates
    flipped = {"cases": 2, "confirmed": False, "rebalance": {"value": False, "confirmed": True}}
    assert describe_calibration({"rebalance": False}, flipped).endswith("; rebalance=False")
    assert describe_calibration({}, {"cases": 2, "rebalance": {"value": False, "confirmed": False}}) \
        == "the configured parameters (rebalance=False lost on fresh updates)"
    # and a shrink toward grey
    assert describe_calibration({}, {"cases": 2, "shrink": {"amount": 0.5, "confirmed": False}}) \
        == "the configured parameters (shrink=0.5 lost on fresh updates)"


@dataclass
class _NoisyParams:
    shrink: float = 0.0


def _noisy(obs, params: _NoisyParams, ctx) -> Reconstruction:
    """Uniform noise: detail that is all wrong (the flat part, mid-grey, is right on average)."""
    from fedattack.attacks.optimize import shrink

    n = obs.protocol.num_examples
    pixels = torch.rand((n, *obs.data.shape), generator=ctx.generator())
    return Reconstruction(images=shrink(obs.data.normalize(pixels), params.shrink, obs.data),
                          labels=torch.zeros(n, dtype=torch.long))


def test_shrinkage_pulls_each_image_toward_its_own_mean_grey():
    from fedattack.attacks.optimize import shrink
    from fedattack.threat import DataSpec

    data = DataSpec(shape=(3, 8, 8), num_classes=2, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    px = torch.rand((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    grey = px.mean(dim=(1, 2, 3), keepdim=True)
    x = data.normalize(px)
    assert torch.equal(shrink(x, 0.0, data), x)
    assert torch.allclose(data.to_pixels(shrink(x, 1.0, data)), grey.expand_as(px), atol=1e-6)  # flat grey
    assert torch.allclose(data.to_pixels(shrink(x, 0.5, data)) - grey, 0.5 * (px - grey), atol=1e-6)


def test_calibration_shrinks_output_whose_detail_is_wrong_and_leaves_flat_output_alone():
    tune, like = _dim_cases(), _dark_then_bright(seed=2)[1]
    noisy = AttackSpec("test-noisy", _noisy, _NoisyParams, "test")
    with ATTACKS.temporarily(noisy.name, noisy):
        cal = calibrate("test-noisy", _NoisyParams(), tune, budget=1, ctx=AttackContext(seed=0), held_out=like)
    assert cal.params.shrink >= 0.75 and cal.tuned == {"shrink": cal.params.shrink}
    assert cal.held_out["shrink"]["confirmed"] and cal.best_psnr > cal.default_psnr + 3
    assert cal.held_out["cases"] == len(like.cases)  # the report's count of fresh updates reads it
    assert cal.trials[-1]["by_amount"]["0.9"] > cal.trials[-1]["by_amount"]["0.0"]

    @dataclass
    class _FlatShrinkParams(_FlatParams):
        shrink: float = 0.0

    flat = AttackSpec("test-flat-shrink", _flat, _FlatShrinkParams, "test")
    with ATTACKS.temporarily(flat.name, flat):  # shrinking a flat image changes nothing: 0 stays
        same = calibrate("test-flat-shrink", _FlatShrinkParams(), tune, budget=1, ctx=AttackContext(seed=0))
    assert same.params.shrink == 0.0 and same.tuned == {} and not same.trials[-1]["improves"]


def test_the_attack_listing_names_what_calibration_tunes_and_flips(capsys):
    assert main(["list", "attacks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    below = {lines[i].split()[0]: lines[i + 1].strip() for i in range(len(lines) - 1) if not lines[i].startswith(" ")}
    # tuned, then flipped, then the budgets it may stretch, then the shrink toward grey
    assert below["invgrad"] == "calibrates: tv, l2, lr, loss, init, rebalance, iterations, restarts, shrink"
    assert below["fedavg"] == "calibrates: tv, lr, invariance, init, iterations, restarts, shrink"  # nothing to flip


def test_a_client_larger_than_the_servers_data_is_named_before_the_first_round():
    from fedattack import config as fconfig
    from fedattack.experiment import build
    from fedattack.server.audit import calibration_notes, server_data, trained_images

    protocol = ["audit.calibrate=true", "client.local_steps=0", "client.local_epochs=2", "client.batch_size=4",
                "audit.attacks=[invgrad]"]
    for clients, seed in ((4, 0), (16, 0), (8, 1)):
        exp = build(fconfig.load(None, [*protocol, f"fl.num_clients={clients}", f"seed={seed}"]))
        data = server_data(exp)
        notes = calibration_notes(exp, data)
        largest = trained_images(exp)
        assert bool(notes) == (largest > len(data[1])), (clients, seed, largest)
        if notes:
            assert f"holds {len(data[1])} images and the largest client trains on {largest}" in notes[0]
    off = build(fconfig.load(None, ["fl.num_clients=4", "client.local_steps=0", "audit.attacks=[invgrad]"]))
    assert calibration_notes(off, server_data(off)) == []  # no calibration, nothing to say


def test_calibration_settings_without_calibration_are_named_before_the_first_round():
    from fedattack import config as fconfig
    from fedattack.experiment import build
    from fedattack.server.audit import Auditor, experiment_plan

    said = {}
    for extra in ([], ["audit.calibration_data=lfw-subset", "audit.calibration_budget=5"]):
        cfg = fconfig.load(None, ["model.name=mlp", "audit.attacks=[idlg]", *extra])
        auditor = Auditor(experiment_plan(build(cfg)), out_dir=None)
        said[len(extra)] = notes = []
        auditor.on_note = notes.append
        with auditor.session():
            pass
    assert said[0] == []
    assert said[2] == ["audit.calibration_budget, audit.calibration_data are set but audit.calibrate is off: no attack "
                       "is calibrated (audit.calibrate=true turns calibration on)."]
