"""`fedattack train-generator`: train the GGL attack's image prior on a configured dataset.

    fedattack train-generator data.name=lfw-subset --labels 1 --exclude-victims --out gen.pt

trains a small DCGAN or WGAN-GP (fedattack.models.generator) on the chosen split, classes
and indices of the dataset, and writes a checkpoint to use as `ggl.generator=gen.pt`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fedattack.arguments import load_config
from fedattack.config import MAX_THREADS
from fedattack.data import load_dataset
from fedattack.errors import FedattackError
from fedattack.experiment import build
from fedattack.gradient_attack import victim_indices
from fedattack.limits import GIB, MEMORY_SHARE, available_memory, traced
from fedattack.models.generator import (Discriminator, Generator, TrainSettings, make_meta, save_generator,
                                        train_generator)
from fedattack.report.store import check_writable
from fedattack.schema import Config
from fedattack.text import counted
from fedattack.validate import check_seed


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise FedattackError(f"{flag}: expected comma-separated integers, got '{text}'") from None
    if not values:
        raise FedattackError(f"{flag}: expected comma-separated integers, got '{text}'")
    return values


def training_images(cfg: Config, *, split: str = "train", labels: list[int] | None = None,
                    exclude: list[int] | None = None, exclude_victims: bool = False) -> tuple[torch.Tensor, list[int]]:
    """The images a generator trains on ([0, 1] pixels at the configured size) and the
    training-split indices left out."""
    splits = load_dataset(cfg.data, seed=cfg.seed)
    drop = set(exclude or [])
    n_train = len(splits.train)
    bad = [i for i in drop if not 0 <= i < n_train]
    if bad:
        raise FedattackError(f"--exclude: index {bad[0]} is outside the training split (0..{n_train - 1})")
    if exclude_victims:
        drop |= {int(i) for i in victim_indices(build(cfg, partitions=False))}
    classes = splits.train.spec.num_classes
    if labels is not None:
        bad = [c for c in labels if not 0 <= c < classes]
        if bad:
            raise FedattackError(f"--labels: class {bad[0]} does not exist (0..{classes - 1})")
    parts = []
    if split in ("train", "all"):
        keep = [i for i in range(n_train) if i not in drop]
        parts.append((splits.train, keep))
    if split in ("test", "all"):
        parts.append((splits.test, list(range(len(splits.test)))))
    chosen = []
    for data, idx in parts:
        idx = np.asarray(idx, dtype=np.int64)
        if labels is not None and len(idx):
            idx = idx[np.isin(data.targets[idx], labels)]
        if len(idx):
            chosen.append(data.pixels(idx))
    if not chosen:
        raise FedattackError("train-generator: no images left after --split/--labels/--exclude")
    return torch.cat(chosen), sorted(drop)


DEFAULT_THREADS = 1
STATUS_EVERY = 30.0  # seconds between progress lines when the output is not a terminal


class TrainingProgress:
    """A progress bar over the epochs (rich) on a terminal; elsewhere (a log file, CI) a line per
    tenth of the epochs and one at least every STATUS_EVERY seconds. Fed by the trainer's log
    lines ("epoch 100/1000: ...")."""

    EPOCH = re.compile(r"^epoch (\d+)/(\d+)")

    def __init__(self, epochs: int, *, quiet: bool = False, terminal: bool | None = None):
        self.epochs = epochs
        self.quiet = quiet
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.epoch = 0
        self.started = time.monotonic()
        self._last = self.started
        self._bar = None
        self._task = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> "TrainingProgress":
        if self.quiet:
            return self
        if self.terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.epochs)
        else:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()

    def _eta(self) -> str:
        if not self.epoch:
            return "no estimate yet"
        spent = time.monotonic() - self.started
        return f"about {spent * (self.epochs - self.epoch) / self.epoch:.0f} s left"

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self._last >= STATUS_EVERY:
                self.line(f"train-generator: {time.monotonic() - self.started:.0f} s, at least epoch "
                          f"{self.epoch}/{self.epochs}; {self._eta()}")

    def line(self, msg: str) -> None:
        if self.quiet:
            return
        self._last = time.monotonic()
        if self._bar is not None:
            self._bar.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, flush=True)

    def log(self, msg: str) -> None:
        """The trainer's log callback."""
        m = self.EPOCH.match(msg)
        if m:
            self.epoch = int(m.group(1))
            if self._bar is not None:
                self._bar.update(self._task, completed=self.epoch)
                return
            msg = f"{msg}; {self._eta()}"
        self.line(msg)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value",
                   help="a YAML config and dotted overrides (data.* chooses the dataset and image size)")
    p.add_argument("--out", required=True, help="checkpoint to write (e.g. gen.pt); use it as ggl.generator=PATH")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the images (default {d.epochs})")
    p.add_argument("--loss", default=d.loss, help="dcgan (non-saturating GAN) or wgan-gp (default dcgan)")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help=f"default {d.latent_dim}")
    p.add_argument("--width", type=int, default=d.width, help=f"base channel width (default {d.width})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=None, help="Adam step size (default 2e-4 DCGAN, 1e-4 WGAN-GP)")
    p.add_argument("--split", choices=["train", "test", "all"], default="train", help="which split to train on (default: train)")
    p.add_argument("--labels", default=None, help="only these class ids, comma-separated (lfw-subset: 1 = faces)")
    p.add_argument("--exclude", default=None, help="training-split indices to leave out, comma-separated")
    p.add_argument("--exclude-victims", action="store_true",
                   help="leave out the images `fedattack attack` with the same config trains the victim on")
    p.add_argument("--no-augment", action="store_true", help="no flips or shifts of the training images")
    p.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}: these small networks gain little from more, "
                        "and on a busy machine torch's own choice measured 20x slower; raise it on an idle "
                        "many-core machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines")


def generator_memory(channels: int, size: int, images: int, settings: TrainSettings) -> int:
    """Bytes that training a generator and its discriminator on `images` images of
    channels x size x size takes: the images (twice: as loaded and scaled), weights with their
    gradients and Adam's moments, and one batch's activations of both networks (three times
    over: forward, backward, and WGAN-GP's penalty). Traced on PyTorch's meta device, where
    nothing is allocated."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        G = Generator(settings.latent_dim, channels, size, settings.width)
        D = Discriminator(channels, size, settings.width)
        z, x = torch.zeros(2, settings.latent_dim), torch.zeros(2, channels, size, size)
    per_sample = (traced(G, z)[1] + traced(D, x)[1]) // 2
    weights = sum(p.numel() * p.element_size() for net in (G, D) for p in net.parameters())
    return 2 * images * x[0].numel() * 4 + 4 * weights + 3 * min(settings.batch_size, images) * per_sample


def check_generator_memory(cfg: Config, settings: TrainSettings, *, split: str = "train") -> None:
    """Refuses, before any image is loaded, a generator that would not fit in this machine's
    memory (`fedattack run` makes the same check for its model)."""
    data = load_dataset(cfg.data, seed=cfg.seed)
    images = data.train if split == "train" else data.test
    channels, size = images.spec.shape[0], images.spec.shape[-1]
    need, available = generator_memory(channels, size, len(images), settings), available_memory()
    if available is not None and need > MEMORY_SHARE * available:
        raise FedattackError(f"data.image_size: training a generator on {len(images)} images of {size}x{size} needs "
                             f"about {need / GIB:.1f} GiB; this machine has {available / GIB:.1f} GiB available; "
                             "lower it (GGL's generators are small: 32 or 64)")


def cmd_train_generator(ns: argparse.Namespace) -> int:
    cfg = load_config(ns, command="train-generator")
    settings = TrainSettings(loss=ns.loss, epochs=ns.epochs, batch_size=ns.batch_size, latent_dim=ns.latent_dim,
                             width=ns.width, lr=ns.lr, augment=not ns.no_augment)
    settings.validate()
    if not 1 <= ns.threads <= MAX_THREADS:
        raise FedattackError(f"--threads: must be 1 to {MAX_THREADS}, got {ns.threads}")
    torch.set_num_threads(ns.threads)
    out = Path(ns.out)
    if out.is_dir():
        raise FedattackError(f"--out: {out} is a directory; give a file path such as {out / 'gen.pt'}")
    if out.exists() and not ns.force:
        raise FedattackError(f"--out: {out} exists; choose a new path, or add --force to replace it")
    check_writable(out.parent, "--out")
    if ns.seed is not None:
        check_seed("--seed", ns.seed)
    if ns.lr is not None and not (math.isfinite(ns.lr) and ns.lr > 0):
        raise FedattackError(f"--lr: must be a finite number > 0, got {ns.lr}")
    labels = _int_list(ns.labels, "--labels")
    exclude = _int_list(ns.exclude, "--exclude")
    check_generator_memory(cfg, settings, split=ns.split)
    if ns.split == "test" and (exclude or ns.exclude_victims):
        raise FedattackError("--exclude: training-split indices do not apply to --split test")
    pixels, dropped = training_images(cfg, split=ns.split, labels=labels, exclude=exclude,
                                      exclude_victims=ns.exclude_victims)
    seed = cfg.seed if ns.seed is None else ns.seed
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log = (lambda msg: None) if ns.quiet else (lambda msg: print(msg, flush=True))
    log(f"train-generator: {settings.loss} on {pixels.shape[0]} images of {tuple(pixels.shape[1:])} from "
        f"{cfg.data.name} ({ns.split} split{', labels ' + ns.labels if labels else ''}"
        f"{f', {len(dropped)} excluded' if dropped else ''}), {counted(settings.epochs, 'epoch')} on {device}"
        f"{'' if device.type == 'cuda' else ', ' + counted(torch.get_num_threads(), 'torch thread')}")
    with TrainingProgress(settings.epochs, quiet=ns.quiet) as bar:
        G, stats = train_generator(pixels, settings, seed=seed, device=device, log=bar.log)
    meta = make_meta(G, settings, pixels.shape[1], dataset=cfg.data.name, split=ns.split,
                     labels=labels, excluded=dropped or None, num_images=int(pixels.shape[0]),
                     epochs=settings.epochs, seed=seed, seconds=round(stats["seconds"], 2))
    save_generator(out, G, meta)
    log(f"wrote {out} ({stats['generator_steps']} generator steps, {stats['seconds']:.1f} s, "
        f"{stats['cpu_seconds']:.1f} s CPU); "
        f"use it with ggl.generator={out}")
    return 0


COMMANDS = {
    "train-generator": ("train a small DCGAN / WGAN-GP on a configured dataset (the GGL attack's prior)",
                        add_arguments, cmd_train_generator),
}

__all__ = ["training_images", "COMMANDS"]
