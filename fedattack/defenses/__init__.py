"""Client-side defenses. Each module below registers its defenses in `DEFENSES` on import."""

from fedattack.defenses import (  # noqa: F401 (register their defenses)
    ats,
    clipping,
    compression,
    dpsgd,
    flower_dp,
    mixup,
    noise,
    precode,
    secagg,
    soteria,
)
from fedattack.defenses.base import (DEFENSES, DefenseContext, DefenseSpec, audit_notes, register_defense,
                                     secure_aggregation)

__all__ = ["DEFENSES", "DefenseContext", "DefenseSpec", "audit_notes", "register_defense", "secure_aggregation"]
