"""English for counted things in log lines and reports: "1 round", "3 rounds", "invgrad runs"."""

from __future__ import annotations


def plural(n: object, one: str, many: str | None = None) -> str:
    """`one` when n is 1, else `many` (by default `one` + "s"). Also agrees a verb with its
    subject's count: plural(n, "runs", "run")."""
    return one if n == 1 else (many if many is not None else one + "s")


def counted(n: object, one: str, many: str | None = None) -> str:
    """n and the noun agreeing with it: counted(1, "round") == "1 round"."""
    return f"{n} {plural(n, one, many)}"
