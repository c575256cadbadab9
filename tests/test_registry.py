"""Registries: names, import paths, and the public way to add and remove an entry."""

from __future__ import annotations

import pytest

from fedattack.errors import ConfigError
from fedattack.registry import Registry


def _registry() -> Registry:
    reg: Registry = Registry("widget", "section.widget")
    reg.register("a", object(), doc="the first")

    @reg.register("b")
    def b():
        """The second widget.

        More text that is not the one-line doc."""

    return reg


def test_register_names_docs_and_duplicates():
    reg = _registry()
    assert reg.names() == ["a", "b"]
    assert reg.doc("a") == "the first" and reg.doc("b") == "The second widget."
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", object())


def test_unknown_names_are_config_errors_of_the_registry_field():
    reg = _registry()
    with pytest.raises(ConfigError, match=r"^section\.widget: unknown widget 'c'; allowed: a, b or module:attr$"):
        reg.check("c")
    with pytest.raises(ConfigError, match=r"^section\.widget: unknown widget 'c'"):
        reg.get("c")
    reg.check("pkg.mod:thing")  # import paths are checked when they are used, not named
    with pytest.raises(ConfigError, match=r"^section\.widget: cannot import 'no_such_pkg:thing'"):
        reg.get("no_such_pkg:thing")
    assert reg.get("fedattack.registry:Registry") is Registry


def test_temporarily_and_unregister():
    reg = _registry()
    entry = object()
    with reg.temporarily("test-entry", entry, doc="a stand-in") as got:
        assert got is entry and reg.get("test-entry") is entry and reg.doc("test-entry") == "a stand-in"
    assert "test-entry" not in reg.names() and reg.doc("test-entry") == ""
    with pytest.raises(RuntimeError), reg.temporarily("gone-after-error", entry):
        raise RuntimeError("the block failed")
    assert "gone-after-error" not in reg.names()
    assert reg.unregister("a") is not None and reg.names() == ["b"]
    with pytest.raises(KeyError):
        reg.unregister("a")


@pytest.mark.parametrize("field, path", [
    ("audit.labels", "torch:save"), ("audit.labels", "fedattack.data.datasets:lfw_subset"),
    ("data.name", "fedattack.attacks.labels:bias_counts"), ("data.name", "numpy:dot"),
])
def test_a_library_function_is_not_a_label_method_or_dataset_of_your_own(field, path):
    """Both are plain two-argument functions: one from torch or fedattack itself would be called."""
    from fedattack.attacks.labels import LABELS
    from fedattack.data import DATASETS

    registry = {"audit.labels": LABELS, "data.name": DATASETS}[field]
    with pytest.raises(ConfigError, match=rf"^{field}: '{path}' is .*, not a .* of your own$"):
        registry.get(path)


def test_find_knows_names_and_paths_and_leaves_the_rest():
    """What acts on the attacks or defenses a config names (a malicious server's check, the
    adaptive attacks' defense models) treats an import path as the name it stands for."""
    from fedattack.attacks import ATTACKS, needing_malicious_server

    rtf = ATTACKS.get("rtf")
    assert ATTACKS.find("rtf") is rtf and ATTACKS.find("fedattack.attacks.rtf:rtf") is rtf
    assert ATTACKS.find("no-such-attack") is None and ATTACKS.find("nosuch.module:x") is None
    assert needing_malicious_server(["idlg", "fedattack.attacks.rtf:rtf", "nope"]) == ["fedattack.attacks.rtf:rtf"]


def test_a_wrong_model_plug_in_is_told_what_to_give_instead():
    from fedattack.models import MODELS

    with pytest.raises(ConfigError, match=r"not a model: give a function or class of your own that makes it, "
                                          r"taking \(in_shape, num_classes, act\)$"):
        MODELS.get("tests.plugins.models:INSTANCE")
    with pytest.raises(ConfigError, match=r"does not take the 3 positional arguments a model receives "
                                          r"\(in_shape, num_classes, act\), nor is it a torch.nn.Module class of "
                                          r"your own that takes none$"):
        MODELS.get("tests.plugins.models:no_arguments")
    with pytest.raises(ConfigError, match=r"the class tests.plugins.models.NeedsDepth, which does not take the 3 "
                                          r"positional arguments"):
        MODELS.get("tests.plugins.models:NeedsDepth")  # a class with arguments of its own
    assert MODELS.get("tests.plugins.models:QuickstartNet") is not None
    with pytest.raises(ConfigError, match=r"No module named 'no_such_pkg'; add the folder that holds it to PYTHONPATH "
                                          r"\(PYTHONPATH=\. where you run from that folder\)\)$"):
        MODELS.get("no_such_pkg:thing")


def test_a_plugin_module_that_fails_while_it_is_imported_is_one_line_naming_the_field(tmp_path, monkeypatch):
    # the user's own code raising at import (a bug, a register_attack without paper=): one line
    # with the error and where it was raised, not a traceback
    from fedattack.models import MODELS

    (tmp_path / "fails_at_import.py").write_text("x = 1\nraise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        MODELS.get("fails_at_import:net")
    said = str(info.value)
    assert said.startswith("model.name: cannot import 'fails_at_import:net': importing it raised RuntimeError: "
                           "broken at import (") and said.endswith("fails_at_import.py, line 2)")
    assert "\n" not in said
    # a script's exit at import ended the command with its code and no word
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match=r"^model.name: cannot import 'exits_at_import:net': importing it called "
                                          r"sys.exit\(0\)"):
        MODELS.get("exits_at_import:net")


def test_an_exceptions_first_line_drops_terminal_colours():
    from fedattack.errors import first_line

    assert first_line(RuntimeError("\x1b[36mray::run_remote()\x1b[39m failed\nTraceback ...")) == "ray::run_remote() failed"
    assert first_line(ValueError("  \n")) == "" and first_line(KeyError("x")) == "'x'"
