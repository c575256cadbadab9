"""Models: the architectures (registry `MODELS`), their extensions (registry `EXTENSIONS`:
PRECODE's bottleneck, Robbing the Fed's imprint block) and `build_model(spec, seed=...)`.

Building a model needs nothing above this package: the extensions a ModelSpec names are
registered here, not by the defense or attack that asks for them. The generators of the
generative attacks are in `fedattack.models.generator`.
"""

from fedattack.models.architectures import ACTIVATIONS, INITIALIZERS, MODELS, check_width, own_module_class
from fedattack.models.build import batch_norm_layers, buffers, build_model, float_params
from fedattack.models.extensions import EXTENSIONS

__all__ = ["ACTIVATIONS", "INITIALIZERS", "MODELS", "EXTENSIONS", "check_width", "own_module_class", "build_model",
           "float_params", "buffers", "batch_norm_layers"]
