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
