"""`python -m tests.plugins.slow_report ARGS`: the fedattack command, its report slowed down so
that a test can signal it while the report is being written ("report-start" marks the moment)."""

from __future__ import annotations

import sys
import time

import fedattack.report.store as store
from fedattack.cli import main

_render = store.render


def slow_render(*args, **kwargs):
    print("report-start", flush=True)
    time.sleep(4)
    return _render(*args, **kwargs)


store.render = slow_render

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
