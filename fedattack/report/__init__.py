"""Run directories: leakage store, plots, galleries, HTML report, console progress."""

from fedattack.report.store import RunStore, read_csv

__all__ = ["RunStore", "read_csv"]
