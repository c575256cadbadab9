"""`secagg`: Bell et al., Secure Single-Server Aggregation with (Poly)Logarithmic Overhead,
CCS 2020 (Flower's SecAgg+). A protocol-level defense: the simulation runs Flower's SecAgg+
workflow, and the server then sees only the sum of the round's updates, which the audit
attacks as an aggregate. Nothing runs in local training.

Parameters are Flower's SecAggPlusWorkflow's: an integer is a count of nodes, a number in
(0, 1] a fraction of the round's sampled nodes (1 means all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedattack.defenses.base import DefenseSpec, register_defense
from fedattack.errors import ConfigError


@dataclass
class SecAggParams:
    num_shares: int | float = 1.0  # nodes each secret is shared with (int > 2) or a fraction (float)
    reconstruction_threshold: int | float = 0.5  # shares needed to reconstruct (int) or a fraction of num_shares
    clipping_range: float = 8.0  # updates are clipped to [-range, range] before quantization (Flower's default)

    def validate(self, name: str) -> None:
        n, t = self.num_shares, self.reconstruction_threshold
        if self.clipping_range <= 0:
            raise ConfigError(f"{name}.clipping_range", f"must be > 0, got {self.clipping_range}")
        if isinstance(n, int) and n != 1 and n <= 2:
            raise ConfigError(f"{name}.num_shares", f"as an integer must be greater than 2 (or a fraction in (0, 1]), got {n}")
        if n <= 0 or (isinstance(n, float) and n > 1):
            raise ConfigError(f"{name}.num_shares", f"as a fraction must be in (0, 1] (or an integer greater than 2), "
                                                    f"got {n}")
        if isinstance(t, float) and not 0 < t <= 1:
            raise ConfigError(f"{name}.reconstruction_threshold", f"as a fraction must be in (0, 1], got {t}")
        if isinstance(t, int) and t != 1:
            if t < 2:
                raise ConfigError(f"{name}.reconstruction_threshold", f"as an integer must be >= 2, got {t}")
            if isinstance(n, int) and n != 1 and t >= n:
                raise ConfigError(f"{name}.reconstruction_threshold",
                                  f"must be less than secagg.num_shares ({n}), got {t}")


register_defense(DefenseSpec(
    name="secagg", params=SecAggParams, where="protocol", protocol="secagg", main_param="num_shares",
    paper="Bell et al., Secure Single-Server Aggregation with (Poly)Logarithmic Overhead, CCS 2020 (Flower SecAgg+)"))
