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
    (["analytic", "--note", "x"], "--note: goes with --save"), (["analytic", "--tag", "gpu"], "--tag: goes with --save"),
])
def test_bad_arguments_run_nothing(capsys, argv, says):
    from benchmarks.__main__ import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err
