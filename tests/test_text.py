"""Counted nouns and verbs in log lines and reports agree with their count."""

from types import SimpleNamespace

from fedattack.report.html import rounds_of
from fedattack.text import counted, plural


def test_counted_nouns_agree_with_their_count():
    assert counted(1, "round") == "1 round"
    assert counted(0, "round") == "0 rounds"
    assert counted(3, "attack job") == "3 attack jobs"
    assert counted(2, "sample", "samples held") == "2 samples held"
    assert counted("?", "step") == "? steps"


def test_verbs_agree_with_their_subject():
    assert plural(1, "runs", "run") == "runs"
    assert plural(2, "runs", "run") == "run"
    assert plural(1, "is", "are") == "is" and plural(4, "is", "are") == "are"


def test_rounds_follow_the_configured_count_where_there_is_one():
    assert rounds_of(1, SimpleNamespace(configured_rounds=3)) == "1 of 3 rounds"
    assert rounds_of(1, SimpleNamespace(configured_rounds=1)) == "1 of 1 round"
    assert rounds_of(1, SimpleNamespace(configured_rounds=None)) == "1 round"
    assert rounds_of(2, SimpleNamespace(configured_rounds=0)) == "2 rounds"
