"""The attack suite. Each module below registers its attacks in `ATTACKS` on import."""

from fedattack.attacks import (  # noqa: F401 (register their attacks)
    analytic, bayes, cpa, cpl, dlg, fedavg, ggl, grnn, invgrad, labels, rgap, rtf, seethrough,
)
from fedattack.attacks.base import (
    ATTACKS, AttackContext, AttackSpec, NoParams, needing_malicious_server, register_attack,
)

__all__ = ["ATTACKS", "AttackContext", "AttackSpec", "NoParams", "needing_malicious_server", "register_attack"]
