"""PRECODE's variational bottleneck (Scheliga et al., WACV 2022), the model extension "precode".

The features z (the input of the Linear layer `fc`) are encoded to (mu, log-variance) of a
K-dimensional Gaussian (`precode.encoder`: features -> 2K), a sample mu + exp(logvar / 2) * eps
is decoded back to the feature size (`precode.decoder`: K -> features), and `fc` reads the
decoded features (the block's parameters come just before the head's, which stays the last
layer). In eval mode the bottleneck decodes mu (no sampling). The training loss term is the
`precode` defense's (fedattack.defenses.precode).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fedattack.errors import ConfigError
from fedattack.models.extensions import EXTENSIONS


class VariationalBottleneck(nn.Module):
    def __init__(self, features: int, size: int):
        super().__init__()
        self.size = size
        self.encoder = nn.Linear(features, 2 * size)
        self.decoder = nn.Linear(size, features)
        self.kl: torch.Tensor | None = None  # KL term of the last forward pass in train mode

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        stats = self.encoder(z)
        mu, logvar = stats[:, :self.size], stats[:, self.size:]
        if self.training:
            code = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
            self.kl = kl.mean() if len(kl) else kl.sum()
        else:
            code = mu
        return self.decoder(code)

    def __getstate__(self):  # copies and pickles drop the last KL term (it holds an autograd graph)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["kl"] = None
        return state

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of the head: it reads the bottleneck's output instead of the features."""
        return (self(args[0]),)


def head_of(model: nn.Module) -> str:
    """The attribute name of the classifier head the bottleneck goes before: `fc` (fedattack's
    lenet, convnet, mlp, resnet18) where it is a Linear layer, else the model's last direct child
    that is one (`fc3` of Flower's quickstart `Net`)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    linear = [name for name, child in model.named_children() if isinstance(child, nn.Linear)]
    if not linear:
        raise ConfigError("client.defenses", "precode needs a model whose classifier head is a fully connected "
                                             "(nn.Linear) layer among its direct children")
    return linear[-1]


@EXTENSIONS.register("precode", doc="PRECODE variational bottleneck before the classifier head (Scheliga et al.)")
def precode(model: nn.Module, in_shape, num_classes, size: int = 256, beta: float = 1e-3) -> nn.Module:
    head_name = head_of(model)
    head = getattr(model, head_name)
    block = VariationalBottleneck(head.in_features, size)
    # register the block just before the head, so parameters keep the forward order and the
    # classification layer stays the last one (label recovery reads the last layer)
    children = list(model._modules.items())
    model._modules.clear()
    for name, child in children:
        if name == head_name:
            model._modules["precode"] = block
        model._modules[name] = child
    head.register_forward_pre_hook(block.pre_hook)
    return model
