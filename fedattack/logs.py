"""Quiet checks: a check that builds a library's object (a Flower strategy) must not print that
library's log lines, so that a bad input is one line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_logs(*names: str) -> Iterator[None]:
    """Silence these loggers for a check (Flower logs a warning for every strategy it builds):
    a bad input is one line."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, before):
            lg.disabled = was


__all__ = ["quiet_logs"]
