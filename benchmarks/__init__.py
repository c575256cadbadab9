"""Performance and quality measurements (not tests): `python -m benchmarks [NAME ...] [--quick]`.

Each `benchmarks/bench_<name>.py` exposes `run(quick: bool) -> list[dict]`: rows of
measured figures (each row a dict of column -> value), printed as one table per module.
"""
