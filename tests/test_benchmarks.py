"""The benchmark modules stay importable as the package changes beneath them (they are run by
hand, not by the suite, so a renamed module would otherwise go unnoticed until someone measures)."""

import importlib

import pytest

from benchmarks.__main__ import available


@pytest.mark.parametrize("name", available())
def test_benchmark_module_imports_and_has_run(name):
    module = importlib.import_module(f"benchmarks.bench_{name}")
    assert callable(getattr(module, "run", None)), f"bench_{name} has no run()"
    assert module.__doc__, f"bench_{name} has no docstring (docs/results.md shows it)"


@pytest.mark.parametrize("argv, says", [
    ([], "name one or more benchmarks, or all"), (["nosuch"], "unknown benchmark nosuch"),
    (["analytic", "--note", "x"], "--note: goes with --save"),
    (["analytic", "--tag", "gpu"], "--tag: goes with --save"),
])
def test_bad_arguments_run_nothing(capsys, argv, says):
    from benchmarks.__main__ import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_all_goes_alone(capsys):
    from benchmarks.__main__ import main

    assert main(["all", "analytic"]) == 2
    err = capsys.readouterr().err
    assert "all runs every benchmark; give it alone" in err and "unknown benchmark" not in err


@pytest.mark.parametrize("where, says", [("missing/x.json", "does not exist"), (".", "is a directory")])
def test_an_unwritable_json_path_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, where, says):
    import benchmarks.__main__ as cli

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: pytest.fail(f"{name} was imported"))
    assert cli.main(["analytic", "--quick", "--json", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json:" in err and says in err
    assert not (tmp_path / "missing").exists()


def test_a_quick_run_never_replaces_a_full_measurement(tmp_path, capsys, monkeypatch):
    import json

    import benchmarks.__main__ as cli

    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: pytest.fail(f"{name} was imported"))
    full = json.dumps({"meta": {"benchmark": "analytic", "quick": False}, "rows": []})
    (tmp_path / "analytic-gpu.json").write_text(full)
    assert cli.main(["analytic", "--quick", "--save"]) == 2
    assert "--quick: with --save it would replace the full measurement" in capsys.readouterr().err
    assert cli.main(["analytic", "--quick", "--save", "--tag", "gpu"]) == 2
    assert "benchmarks/results/analytic-gpu.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytic-gpu.json"]
    assert (tmp_path / "analytic-gpu.json").read_text() == full


def test_a_bad_seed_list_is_named_before_anything_runs(capsys, monkeypatch):
    from benchmarks import bench_default_run
    from benchmarks.__main__ import main

    monkeypatch.setattr(bench_default_run, "one_run", lambda *a: pytest.fail("a run started"))
    for bad in ("x", "0,", "1;2", "-1"):
        monkeypatch.setenv("FEDATTACK_SEEDS", bad)
        assert main(["default_run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "FEDATTACK_SEEDS" in err and "comma-separated" in err
    monkeypatch.setenv("FEDATTACK_SEEDS", "0, 2")
    assert bench_default_run.seeds(quick=False) == [0, 2]


@pytest.mark.parametrize("name, variable, value, says", [
    ("multistep", "FEDATTACK_MULTISTEP_BUDGET_S", "x", "a positive number of seconds"),
    ("multistep", "FEDATTACK_MULTISTEP_BUDGET_S", "0", "a positive number of seconds"),
    ("speed", "FEDATTACK_SPEED_SECONDS", "nan", "a positive number of seconds"),
    ("speed", "FEDATTACK_SPEED_FACES", "9", "1 to 5"),
])
def test_a_bad_benchmark_setting_is_named_before_anything_runs(capsys, monkeypatch, name, variable, value, says):
    import importlib

    from benchmarks.__main__ import main

    monkeypatch.setattr(importlib.import_module(f"benchmarks.bench_{name}"), "run",
                        lambda quick=False: pytest.fail("the benchmark ran"))
    monkeypatch.setenv(variable, value)
    assert main([name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{variable}={value!r}" in err and says in err


def test_protocol_map_takes_one_named_model(capsys, monkeypatch):
    from benchmarks import bench_protocol_map as bench

    monkeypatch.setattr(bench, "run_model", lambda model, quick=False: [{"model": model, "quick": quick}])
    for argv, says in (([], "MODEL"), (["nosuch"], "unknown model 'nosuch'")):
        with pytest.raises(SystemExit) as info:
            bench.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and says in err
        assert "lenet-sigmoid, convnet, quickstart-cnn" in err
    with pytest.raises(SystemExit) as info:
        bench.main(["--help"])
    assert info.value.code == 0 and "quickstart-cnn (quickstart CNN)" in capsys.readouterr().out
    assert bench.main(["quickstart-cnn", "--quick"]) == 0
    assert '"model": "quickstart CNN", "quick": true' in capsys.readouterr().out
    assert bench.main(["LeNet sigmoid"]) == 0 and '"LeNet sigmoid"' in capsys.readouterr().out


def test_render_check_names_each_stale_section(tmp_path, capsys, monkeypatch):
    from benchmarks import render_docs

    page = tmp_path / "results.md"
    monkeypatch.setattr(render_docs, "OUT", page)
    assert render_docs.main(["--check"]) == 1
    assert capsys.readouterr().err == f"{page}: missing; run python -m benchmarks.render_docs\n"
    text = render_docs.render()
    page.write_text(text)
    assert render_docs.main(["--check"]) == 0 and capsys.readouterr().err == ""
    edited = text.replace("\n## analytic\n", "\n## analytic\n\nhand-typed\n", 1)
    page.write_text(edited.split("\n## baselines\n", 1)[0] + "\n## basin\n" + text.split("\n## basin\n", 1)[1])
    assert render_docs.main(["--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{page}: section {name} {what} from benchmarks/results/{name}.json (and benchmarks/bench_{name}.py's "
        f"docstring); run python -m benchmarks.render_docs" for name, what in (("analytic", "differs"),
                                                                                ("baselines", "is missing"))]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sigmoid_lenet_update_pins_down_every_pixel_and_the_oracles_recover_the_image(seed):
    import torch

    from benchmarks import bench_identifiability as ident
    from benchmarks.bench_realistic import victim

    obs, truth, _ = victim(ident.lenet_case("sigmoid", size=16, seeds=(seed,)), seed)
    found = ident.identified(obs, truth)
    assert found["rank"] == found["pixels"] == 768
    pixels = obs.data.to_pixels(truth.images.double()).reshape(-1)
    jac = ident.jacobian(ident.update_function(obs, truth.labels), pixels)
    assert torch.linalg.matrix_rank(jac).item() == 768  # torch's own rank of the Jacobian agrees
    assert found["known + flat"][0] > 60 and found["known + smoothest"][0] > 60


def test_max_pooling_leaves_most_pixel_directions_to_the_prior():
    """Flower's quickstart CNN: after its first pooling the network sees 6 x 14 x 14 numbers, and the
    first convolution's gradient adds 456, so at most 1632 of 3072 directions are constrained; the
    oracle that keeps the constrained part and fills the rest flat is never below the flat image."""
    from benchmarks import bench_identifiability as ident
    from benchmarks.bench_realistic import victim

    obs, truth, _ = victim(ident.realistic_case("1 img, 1 step, quickstart CNN, photos"), 0)
    found = ident.identified(obs, truth)
    assert found["pixels"] == 3072 and 300 < found["rank"] <= 6 * 14 * 14 + 456
    assert found["flat"] <= found["known + flat"][0] < 60
