"""Checks for config values; each raises a ConfigError naming the field `name.key`.

Plug-in parameter dataclasses call them from their `validate(name)` method:

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_choice(name, "optimizer", self.optimizer, ["adam", "lbfgs"])
"""

from __future__ import annotations

import math

from fedattack.errors import ConfigError

SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (np.random.seed, which Flower's DP noise uses) takes [0, 2**32)


def check_finite(name: str, key: str, value: float) -> None:
    """A number, not NaN or infinite (every range check starts with this one)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}.{key}", f"must be a finite number, got {value}")


def check_range(name: str, key: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """lo <= value <= hi (lo < value with lo_open); either bound may be None. NaN and infinity
    are out of every range."""
    check_finite(name, key, value)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{name}.{key}", f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}.{key}", f"must be <= {hi}, got {value}")


def check_between(name: str, key: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                  hi_open: bool = False) -> None:
    """value in the interval [lo, hi], either end open, reported as an interval."""
    check_finite(name, key, value)
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name}.{key}", f"must be in {interval}, got {value}")


def check_seed(field: str, value: int) -> None:
    """A seed: an integer in [0, 2**32 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(field, f"must be an integer in [0, {SEED_MAX}], got {value}")


def first_repeat(items) -> object | None:
    """The first item listed again in `items` (None if each appears once)."""
    items = list(items)
    return next((x for i, x in enumerate(items) if x in items[:i]), None)


def check_choice(name: str, key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}.{key}", f"unknown value '{value}'; allowed: {', '.join(allowed)}")
