"""The recipes run as written: every `fedattack` command of README.md and docs/recipes.md.

Each fenced bash block is read as a shell would (continued lines, comments, `cd`, variable
assignments before the command); every `fedattack` command in it runs for real, in a
scratch folder laid out like the repository (configs/, examples/, `my.yaml` a copy of the
default config, `~/photos` a small image folder), with overrides appended that shrink it
(one round, one attack iteration, one sweep value) and change nothing else. A block's commands
run in order in one folder (a report reads the run before it); blocks run three at a time,
the longest first.

Commands that need what a test machine has not got are listed in SKIPPED with the reason.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from fedattack.attacks import ATTACKS
from fedattack.config import load

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "recipes.md"]
SKIPPED = {  # a word in the command -> why it cannot run here
    "HEAD:": "joins a Ray cluster running on other machines",
    "data.name=hf:": "needs a Hugging Face dataset (a download, or the cache one fills)",
}
SHRINK_RUN = ["fl.rounds=1", "fl.clients_per_round=2", "ray.num_cpus=1", "audit.max_concurrent=1",
              "audit.max_clients=1"]
SHRINK_FIELDS = ("iterations", "max_iter", "restarts", "candidates")  # set to 1 for every listed attack


@dataclass
class Command:
    doc: str
    line: str  # as written
    cwd: str  # relative to the scratch folder
    env: dict[str, str]
    argv: list[str]  # after `fedattack`


@dataclass
class Block:
    doc: str
    commands: list[Command] = field(default_factory=list)


def blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            block = Block(doc.name)
            cwd = "."
            for line in body.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                env = {}
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    k, _, v = words.pop(0).partition("=")
                    env[k] = v
                if words[:1] == ["cd"]:
                    cwd = os.path.normpath(os.path.join(cwd, words[1]))
                elif words[:1] == ["fedattack"]:
                    block.commands.append(Command(doc.name, line.strip(), cwd, env, words[1:]))
            if block.commands:
                out.append(block)
    return out


def test_the_docs_have_recipes_to_run():
    commands = [c for b in blocks() for c in b.commands]
    verbs = {c.argv[0] for c in commands}
    assert {"run", "attack", "sweep", "report"} <= verbs, verbs
    assert any("mine.iterations=5" in c.line and c.env.get("PYTHONPATH") == "." and c.cwd == "examples"
               for c in commands)


def _scratch(base: Path) -> Path:
    base.mkdir(parents=True)
    shutil.copytree(ROOT / "configs", base / "configs")
    shutil.copytree(ROOT / "examples", base / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "configs" / "default.yaml", base / "my.yaml")
    return base


def _photos(home: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        d = home / "photos" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(20):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype("uint8")).save(d / f"{i}.png")


def _shrink(cmd: Command, cwd: Path, pythonpath: list[str]) -> list[str]:
    """The overrides that make `cmd` tiny: one round, one of each attack's iterations."""
    verb = cmd.argv[0]
    if verb not in ("run", "attack", "sweep"):
        return []
    items, rest = [], iter(cmd.argv[1:])
    for a in rest:
        if a == "--out":
            next(rest, None)
        elif not a.startswith("--"):
            items.append(a)
    config = next((a for a in items if "=" not in a), None)
    overrides = [a for a in items if "=" in a]
    for p in pythonpath:  # the recipe's own packages (examples/mypkg), as the command will see them
        if p not in sys.path:
            sys.path.insert(0, p)
    cfg = load(str(cwd / config) if config else None, overrides)
    extra = [f"{ATTACKS.get(a).name}.{f.name}=1" for a in cfg.audit.attacks for f in fields(ATTACKS.get(a).params)
             if f.name in SHRINK_FIELDS]
    if cfg.audit.calibrate:
        extra += ["audit.calibration_budget=2", "audit.calibration_cases=1", "audit.calibration_images=1"]
    if verb == "attack":
        return extra
    if verb == "sweep":  # its first value and seed (plus the reference run it always has)
        extra += [f"sweep.values=[{json.dumps(cfg.sweep.values[0])}]"]
        extra += [f"sweep.seeds=[{cfg.sweep.seeds[0]}]"] if cfg.sweep.seeds else []
    return [*SHRINK_RUN, *extra]


def plan() -> list[Block]:
    """The blocks with the commands to run: each command once (where it first appears), none
    that SKIPPED names."""
    seen, out = set(), []
    for block in blocks():
        keep = Block(block.doc)
        for cmd in block.commands:
            key = (cmd.cwd, tuple(sorted(cmd.env.items())), tuple(cmd.argv))
            if key in seen or any(word in cmd.line for word in SKIPPED):
                continue
            seen.add(key)
            keep.commands.append(cmd)
        if keep.commands:
            out.append(keep)
    return out


def _run_block(block: Block, base: Path, home: Path) -> list[str]:
    """Run a block's commands in order; returns the problems found."""
    problems = []
    for cmd in block.commands:
        cwd = (base / cmd.cwd).resolve()
        pythonpath = [str((cwd / p).resolve()) for p in cmd.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        pythonpath.append(str(ROOT))  # this checkout's fedattack, wherever the scratch folder is
        argv = [*cmd.argv, *_shrink(cmd, cwd, pythonpath)]
        env = {**os.environ, **cmd.env, "PYTHONPATH": os.pathsep.join(pythonpath), "HOME": str(home),
               "COLUMNS": "200"}
        before = set(cwd.rglob("leakage.csv"))
        res = subprocess.run([sys.executable, "-m", "fedattack", *argv], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=900)
        if res.returncode != 0:
            problems.append(f"{cmd.doc}: `{cmd.line}` exited {res.returncode}:\n{res.stderr[-2500:]}")
            continue
        for path in sorted(set(cwd.rglob("leakage.csv")) - before):
            rows = list(csv.DictReader(path.open()))
            bad = [f"{r['attack']}: {r['status']} {r['error']}" for r in rows if r["status"] != "ok"]
            if not rows or bad:
                problems.append(f"{cmd.doc}: `{cmd.line}` wrote {len(rows)} rows in {path.parent.name}, "
                                f"not ok: {bad[:3]}")
    return problems


@pytest.mark.slow
def test_every_recipe_runs_as_written(tmp_path):
    home = tmp_path / "home"
    _photos(home)
    # the longest blocks first (a sweep is two runs once shrunk), so that no long block starts last
    todo = sorted(plan(), key=lambda b: -sum(1 + (c.argv[0] == "sweep") for c in b.commands))
    with ThreadPoolExecutor(max_workers=3) as pool:
        found = list(pool.map(lambda ib: _run_block(ib[1], _scratch(tmp_path / f"b{ib[0]}"), home),
                              enumerate(todo)))
    problems = [p for ps in found for p in ps]
    assert problems == [], "\n\n".join(problems)
