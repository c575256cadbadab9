"""The package is built in layers, bottom to top, with no import cycles.

The import graph holds every `fedattack` import of every module, at module level and inside
functions. A module may import from its own layer and the layers below; never from above,
and never in a cycle. The few imports inside functions are the ones listed in LAZY, each
with its reason.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fedattack"

# bottom to top; a name covers the module and everything below it, except the bare package
# `fedattack`, which is its __init__ only: it re-exports the public API (fedattack.api), so it
# sits on top, and every other module names its layer here
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["fedattack.errors", "fedattack.validate", "fedattack.registry", "fedattack.shutdown", "fedattack.text",
              "fedattack.logs"]),
    ("types", ["fedattack.threat", "fedattack.schema", "fedattack.results"]),
    ("models, data, metrics", ["fedattack.models", "fedattack.data", "fedattack.metrics"]),
    ("plug-ins", ["fedattack.attacks", "fedattack.defenses", "fedattack.strategies"]),
    ("config", ["fedattack.config", "fedattack.experiment", "fedattack.limits"]),
    ("report", ["fedattack.report"]),
    ("client, server", ["fedattack.client", "fedattack.server"]),
    # what a Flower user's own app imports: the client's record and mods, the audit strategy
    ("public API", ["fedattack.api"]),
    ("commands", ["fedattack.arguments", "fedattack.simulate", "fedattack.gradient_attack", "fedattack.sweep",
                  "fedattack.train_generator", "fedattack.testing"]),
    ("cli", ["fedattack.cli", "fedattack.__main__"]),
    ("package", ["fedattack"]),
]

# (importing module, imported module) -> why the import sits inside a function
LAZY: dict[tuple[str, str], str] = {
    ("fedattack", "fedattack.api"): "the package exports the public API on first access (PEP 562 __getattr__), so "
                                    "importing any lower module (fedattack.errors in a Ray worker) does not load "
                                    "the whole stack through the package's __init__",
    ("fedattack.__main__", "fedattack.cli"): "the command line's entry point catches Ctrl-C while torch and Flower "
                                             "load, so that interrupt is one line, not a traceback",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "fedattack" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported fedattack module, whether the import is inside a function) for every import."""
    tree = ast.parse(MODULES[module].read_text())
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, nested) for a in child.names if a.name.split(".")[0] == "fedattack")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the importing module's package
                    package = module if _is_package(module) else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                if base.split(".")[0] == "fedattack":
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        out.append((sub if sub in MODULES else base, nested))
            visit(child, inner)

    visit(tree, False)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_every_import_goes_down_or_sideways():
    upward = [f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {dst} (layer {LAYERS[layer_of(dst)][0]})"
              for m, edges in GRAPH.items() for dst, _ in edges if layer_of(dst) > layer_of(m)]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dst, _ in GRAPH[m]:
            if state.get(dst) == 1:
                return path[path.index(dst):] + [dst]
            if dst not in state and (cycle := walk(dst)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in MODULES:
        if m not in state:
            cycle = walk(m)
            assert cycle is None, " -> ".join(cycle)


def test_imports_inside_functions_are_the_listed_ones():
    lazy = {(m, dst) for m, edges in GRAPH.items() for dst, nested in edges if nested}
    assert lazy == set(LAZY)


@pytest.mark.parametrize("package, register", [("fedattack.attacks", "register_attack"),
                                               ("fedattack.defenses", "register_defense")])
def test_plug_in_packages_import_every_module_that_registers(package, register):
    registering = {m for m in MODULES if m.startswith(package + ".") and f"{register}(" in MODULES[m].read_text()
                   and not m.endswith(".base")}
    imported = {dst for dst, _ in GRAPH[package]}
    assert registering <= imported, f"{package}/__init__.py misses {sorted(registering - imported)}"


def test_every_module_imports_bottom_up_in_a_fresh_interpreter():
    # each module is imported with only its own and lower layers loaded before it (all but
    # __main__, which runs the command); building a model with both extensions loads neither
    # attacks nor defenses
    order = sorted((m for m in MODULES if m != "fedattack.__main__"), key=lambda m: (layer_of(m), m))
    script = f"""
import importlib, json, sys
order = {order!r}
for name in order[:order.index("fedattack.attacks")]:
    importlib.import_module(name)
from fedattack.models import build_model
from fedattack.threat import ModelSpec
spec = ModelSpec(name="lenet", activation="relu", num_classes=2, in_shape=(1, 16, 16),
                 extensions=(("precode", '{{"size": 8}}'), ("imprint", '{{"num_bins": 4}}')))
names = [n for n, _ in build_model(spec, seed=0).named_parameters()]
loaded = sorted({{m.split(".")[1] for m in sys.modules if m.startswith("fedattack.")}})
for name in order:
    importlib.import_module(name)
print(json.dumps({{"names": names, "loaded": loaded}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "attacks" not in out["loaded"] and "defenses" not in out["loaded"], out["loaded"]
    assert out["names"][0].startswith("imprint.") and any(n.startswith("model.precode.") for n in out["names"])
