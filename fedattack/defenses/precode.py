"""`precode`: Scheliga et al., PRECODE - A Generic Model Extension to Prevent Deep Gradient
Leakage, WACV 2022.

A variational bottleneck inserted before the classifier head: the features z (the input of
the Linear layer `fc`) are encoded to (mu, log-variance) of a K-dimensional Gaussian
(`precode.encoder`: features -> 2K), a sample mu + exp(logvar / 2) * eps is decoded back
to the feature size (`precode.decoder`: K -> features), and `fc` reads the decoded features
(the block's parameters come just before the head's, which stays the last layer).
Training adds beta * KL(N(mu, sigma^2) || N(0, I)) (mean over the batch) to the loss, as the
authors' training code adds the bottleneck's loss to the cross-entropy. In eval mode the
bottleneck decodes mu (no sampling).

The bottleneck is the model extension "precode" (fedattack.models.bottleneck), named in the
model spec, so the server and every client build the same extended model; parameters are
named `precode.encoder.weight`, `precode.decoder.weight`, ... beside the model's own. This
module holds the defense: its parameters and the KL term of the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.errors import ConfigError
from fedattack.validate import check_range


@dataclass
class PrecodeParams:
    size: int = 256  # K, the bottleneck dimension (the paper's default)
    beta: float = 1e-3  # weight of the KL term in the training loss

    def validate(self, name: str) -> None:
        check_range(name, "size", self.size, lo=1)
        check_range(name, "beta", self.beta, lo=0.0)


def precode_loss(model: nn.Module, params: PrecodeParams, ctx: DefenseContext) -> torch.Tensor | None:
    block = getattr(getattr(model, "_module", model), "precode", None)
    if block is None:
        raise ConfigError("precode", "the model lacks the PRECODE block: build it from the experiment's model spec")
    return None if block.kl is None else params.beta * block.kl


register_defense(DefenseSpec(
    name="precode", params=PrecodeParams, where="model", model_extension="precode", main_param="size",
    loss=precode_loss,
    paper="Scheliga et al., PRECODE - A Generic Model Extension to Prevent Deep Gradient Leakage, WACV 2022"))
