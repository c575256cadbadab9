"""What a config asks of the machine, the dataset and the model, checked before anything starts.

`fedattack.config.validate` checks each value on its own, the same on every machine (clients
load the config too); the checks here depend on the loaded dataset, the model and this
machine, so the commands run them once the experiment is built and before Ray starts or any
file is written:

- the model builds and runs on the configured images (`check_model`): a model factory is
  called as `fn(in_shape, num_classes, act, width=...)`, `act` being a zero-argument callable
  that returns a new activation module (`act()`, e.g. `torch.nn.ReLU`), never a name;
- `client.batch_size` fits the training split, and a training batch fits in memory
  (`check_memory`, from the activations of one forward pass: on the CPU for images of up to
  3x256x256, on PyTorch's meta device, where nothing is allocated, above);
- a local Ray instance has the CPUs and GPUs each client asks for (`check_machine`); a joined
  cluster has a node that fits one client (`check_cluster`, once connected).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from fedattack.defenses import DEFENSES
from fedattack.errors import ConfigError, first_line
from fedattack.experiment import Experiment
from fedattack.models import build_model
from fedattack.schema import Config
from fedattack.text import plural
from fedattack.threat import ModelSpec

MODEL_CONTRACT = ("a model factory is called as fn(in_shape, num_classes, act, width=...), act being a "
                  "zero-argument callable that returns a new activation module (call act() per layer)")
OWN_CLASS_CONTRACT = ("a model class of your own that takes no arguments is built as cls() and must take the "
                      "dataset's images and return their logits; set data.image_size and data.channels (and use a "
                      "dataset of as many classes) to match it")
MEMORY_SHARE = 0.8  # of the memory available now that one training batch may need
GIB = 1024 ** 3
# a Flower client process (Ray actor) with torch loaded holds about 0.85 GiB; the bound stays below it
ACTOR_MEMORY = GIB // 2
REAL_TRACE_VALUES = 3 * 256 * 256  # image size (values) up to which `footprint` runs the model for real


@dataclass(frozen=True)
class Footprint:
    """What training the model costs, in bytes: per sample (activations) and in total (weights)."""

    per_sample: int
    params: int

    def training(self, batch: int) -> int:
        # weights, their gradients, the optimizer's momentum and the sent copy; activations and
        # their gradients per sample of the batch
        return 4 * self.params + 2 * batch * self.per_sample


def footprint(spec: ModelSpec, batch: int = 2) -> Footprint:
    """One forward pass of `batch` images (two by default: BatchNorm in training mode needs more
    than one value per channel), counting every layer's output; raises what building or
    running the model raises. Images of up to `REAL_TRACE_VALUES` values run on the CPU (a few
    milliseconds for the usual models; the caller builds the model anyway), larger ones on
    PyTorch's meta device, where nothing is allocated (its first linear layer costs 2-4 s of
    one-off set-up). The global random state is left as it was."""
    c, h, w = spec.in_shape
    device = "cpu" if c * h * w <= REAL_TRACE_VALUES else "meta"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        model = build_model(spec)
        x = torch.zeros(batch, *spec.in_shape)
    out, outputs = traced(model, x)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), spec.num_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelOutputError(f"it returns {got} for {len(x)} images; a model returns their logits, "
                               f"a tensor of shape ({len(x)}, {spec.num_classes})")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return Footprint(per_sample=(x.numel() * x.element_size() + outputs) // len(x), params=params)


def traced(model: torch.nn.Module, x: torch.Tensor) -> tuple[Any, int]:
    """`model(x)` without gradients, and the bytes of every leaf module's outputs on the way."""
    outputs = 0

    def count(module: Any, inputs: Any, out: Any) -> None:
        nonlocal outputs
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                outputs += t.numel() * t.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, outputs


class ModelOutputError(ValueError):
    """The model runs on the images but does not return one row of logits per image."""


def check_model(exp: Experiment) -> Footprint | None:
    """The model builds and takes the configured images; its footprint (None where the meta
    device cannot trace it and a real build, for mid-sized inputs, had to stand in)."""
    spec = exp.model_spec
    c, h, w = spec.in_shape
    where = f"{c}x{h}x{w} images and {spec.num_classes} classes"
    batch = 1 if exp.cfg.client.batch_size == 1 else 2  # a client training one image at a time: one
    try:
        return footprint(spec, batch)
    except ConfigError:  # the registry refused the model by name: its own line
        raise
    except ModelOutputError as exc:
        raise ConfigError("model.name", f"model '{exp.cfg.model.name}' on {where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a user's factory may raise anything
        traced_error = exc
    if c * h * w <= REAL_TRACE_VALUES or c * h * w > 2 ** 22:  # it ran for real, or is too large to
        raise _model_error(exp, where, traced_error)  # try for real: the footprint's answer stands
    try:  # some layers have no meta kernels: build it for real, one image
        model = build_model(spec)
        with torch.no_grad():
            model(torch.zeros(batch, c, h, w))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _model_error(exp, where, exc) from None
    return None


def _model_error(exp: Experiment, where: str, exc: BaseException | None) -> ConfigError:
    line = first_line(exc)[:200] if exc else ""
    what = f"{type(exc).__name__}: {line}" if exc else "unknown error"
    if "more than 1 value per channel" in line:  # BatchNorm on a 1x1 map, one image per batch
        return ConfigError("client.batch_size", f"model '{exp.cfg.model.name}' cannot train on one image at a "
                                               f"time on {where} ({what}); set client.batch_size >= 2")
    own = exp.model_spec.module is not None
    field = "data.image_size" if _too_small(exc) and not own else "model.name"
    hint = "raise data.image_size" if field == "data.image_size" else OWN_CLASS_CONTRACT if own else MODEL_CONTRACT
    return ConfigError(field, f"model '{exp.cfg.model.name}' cannot be built for {where} ({what}); {hint}")


def _too_small(exc: BaseException | None) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("kernel size can't be greater", "output size is too small",
                                   "input size per channel", "too small"))


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(exp: Experiment, fp: Footprint | None, *, available: int | None = None) -> None:
    """client.batch_size against the training split, and one training batch against memory."""
    cfg = exp.cfg
    n = len(exp.train)
    b = cfg.client.batch_size
    if b > n:
        raise ConfigError("client.batch_size", f"{b} is more than the {n} images of the training split of "
                                               f"{cfg.data.name}; lower it")
    available = available_memory() if available is None else available
    if fp is None or available is None:
        return
    budget = MEMORY_SHARE * available
    c, h, w = exp.model_spec.in_shape
    if fp.training(1) > budget:
        raise ConfigError("data.image_size", f"{h}x{w} images need about {fp.training(1) / GIB:.1f} GiB to train "
                                             f"model '{cfg.model.name}' on one image; this machine has "
                                             f"{available / GIB:.1f} GiB available; lower it")
    if fp.training(b) > budget:
        fits = max(1, int((budget - 4 * fp.params) // (2 * fp.per_sample)))
        raise ConfigError("client.batch_size", f"a batch of {b} images of {c}x{h}x{w} needs about "
                                               f"{fp.training(b) / GIB:.1f} GiB to train model '{cfg.model.name}'; "
                                               f"this machine has {available / GIB:.1f} GiB available (at most "
                                               f"about {fits} fit)")


def local_gpus() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0


def check_defenses(exp: Experiment) -> None:
    """Each configured defense can act on the model (`DefenseSpec.check_model`: dpsgd and
    BatchNorm, soteria without a Linear head), checked here rather than inside the first client."""
    checks = [(spec.check_model, exp.cfg.defense(d)) for d in exp.cfg.client.defenses
              if (spec := DEFENSES.get(d)).check_model is not None]
    if checks:
        model = build_model(exp.model_spec)
        for check, params in checks:
            check(model, params)


def check_machine(exp: Experiment) -> None:
    """Everything above for `fedattack run`: the model, the defenses on it, memory, and (local
    Ray) the CPUs and GPUs each client asks for."""
    check_memory(exp, check_model(exp))
    check_defenses(exp)
    cfg = exp.cfg
    if cfg.ray.address:
        return  # a cluster's resources are checked once connected (check_cluster)
    cores = os.cpu_count() or 1
    if cfg.ray.num_cpus is not None and cfg.ray.num_cpus > cores:  # Flower starts a client process per CPU
        raise ConfigError("ray.num_cpus", f"this machine has {cores} cores; allowed: 1 to {cores}, or null for all")
    cpus = cfg.ray.num_cpus or cores
    if cfg.fl.client_cpus > cpus:
        raise ConfigError("fl.client_cpus", f"each client asks for {cfg.fl.client_cpus:g} CPUs but the local Ray "
                                            f"instance has {cpus} (ray.num_cpus or this machine's cores)")
    check_actors(cpus, cfg.fl.client_cpus, available_memory())
    gpus = local_gpus()
    if cfg.fl.client_gpus > gpus:
        raise ConfigError("fl.client_gpus", f"each client asks for {cfg.fl.client_gpus:g} "
                                            f"{plural(cfg.fl.client_gpus, 'GPU')} but this machine has {gpus}")


def check_actors(cpus: float, client_cpus: float, available: int | None) -> None:
    """Flower starts int(cpus / client_cpus) client processes up front (its actor pool): they must
    fit in memory, at ACTOR_MEMORY each."""
    actors = int(cpus / client_cpus)
    if available is None or actors * ACTOR_MEMORY <= MEMORY_SHARE * available:
        return
    fits = max(1, int(MEMORY_SHARE * available // ACTOR_MEMORY))
    raise ConfigError("fl.client_cpus", f"{client_cpus:g} CPUs per client makes Flower start {actors} client "
                                        f"processes on {cpus:g} CPUs, about {actors * ACTOR_MEMORY / GIB:.0f} GiB; "
                                        f"this machine has {available / GIB:.1f} GiB available; allowed: at least "
                                        f"{cpus / fits:.3g}")


def check_cluster(cfg: Config) -> None:
    """On a joined cluster: some alive node fits one client (else Flower's actor pool is empty)."""
    if not cfg.ray.address:
        return
    import ray

    need = {"CPU": cfg.fl.client_cpus, "GPU": cfg.fl.client_gpus}
    for node in ray.nodes():
        res = node.get("Resources") or {}
        if node.get("Alive", True) and all(res.get(k, 0) >= v for k, v in need.items() if v > 0):
            return
    raise ConfigError("fl.client_cpus", f"no node of the Ray cluster at {cfg.ray.address} has "
                                        f"{cfg.fl.client_cpus:g} CPUs and {cfg.fl.client_gpus:g} GPUs for a client")


__all__ = ["Footprint", "footprint", "check_model", "check_memory", "check_machine", "check_actors", "check_cluster",
           "available_memory", "MODEL_CONTRACT"]
