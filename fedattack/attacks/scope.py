"""Which attacks run where the server sees only sums of updates (SecAgg+): an attack of scope
"client" needs one client's update and is never given one there."""

from __future__ import annotations

from collections.abc import Iterable

from fedattack.attacks.base import ATTACKS
from fedattack.defenses import secure_aggregation


def idle_attacks(attacks: Iterable[str], defenses: Iterable[str]) -> tuple[str, ...]:
    """The attacks among `attacks` that have nothing to attack under `defenses`: under SecAgg+
    the server holds each round's sum of updates only, and an attack that needs one client's
    update (scope "client") is never given one. An attack this installation cannot find is kept
    (nothing is known about it to say it does not run)."""
    return client_only(attacks) if secure_aggregation(list(defenses)) is not None else ()


def client_only(attacks: Iterable[str]) -> tuple[str, ...]:
    """The attacks among `attacks` that need one client's update (scope "client"); an attack
    this installation cannot find is left out."""
    return tuple(a for a in attacks if (spec := ATTACKS.find(a)) is not None and spec.scope == "client")


def needs_words(names: Iterable[str]) -> str:
    """What the model must have for each of `names` to run, in words ("; cpa needs ..."; "" where
    any model will do)."""
    return "".join(f"; {n} needs {ATTACKS.get(n).needs}" for n in names if ATTACKS.get(n).needs)


def sum_attacks() -> tuple[str, ...]:
    """The registered attacks an honest server can run on a sum of updates (what to add to a
    SecAgg+ run whose attacks all need one client's update)."""
    return tuple(n for n in ATTACKS.names() if ATTACKS.get(n).scope in ("aggregate", "any")
                 and not ATTACKS.get(n).needs_malicious)
