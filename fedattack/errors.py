"""Errors a user can act on: each names the config field and what is allowed."""

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours (Ray's task errors carry them)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes ("" where it has none)."""
    return (_ANSI.sub("", str(exc)).strip().splitlines() or [""])[0]


class FedattackError(Exception):
    """An error reported to the user as one line, exit code 2."""


class ConfigError(FedattackError):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class DataError(FedattackError):
    """A dataset is configured but cannot be loaded (missing root, bad files)."""


class AttackFailure(FedattackError):
    """An attack cannot reconstruct from this observation (the model lacks what it reads,
    nothing leaked into the layer it inverts, the optimization diverged).

    The audit records it as a failed job and goes on; any other exception from an attack is
    recorded as an error (a bug), or raised where jobs run strict (see fedattack.server.jobs)."""
