"""Model extensions: blocks wrapped around a built model, by name.

An extension is `fn(model, in_shape, num_classes, **params) -> nn.Module`. A ModelSpec lists
the extensions the server distributes (a defense's, such as PRECODE's bottleneck; a malicious
server's, such as Robbing the Fed's imprint block) by name, so every process that builds the
model builds the same one. The blocks live beside the architectures (fedattack.models), never
in the attack or defense that asks for them.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from fedattack.registry import Registry

EXTENSIONS: Registry[Callable[..., nn.Module]] = Registry("model extension", "model.extensions")
