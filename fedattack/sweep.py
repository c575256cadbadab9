"""`fedattack sweep`: the privacy-utility frontier and protocol map of any config key.

    fedattack sweep CONFIG sweep.defense=gaussian sweep.values=[0.001,0.01,0.1,1.0] sweep.seeds=[0,1,2]
    fedattack sweep CONFIG sweep.key=client.local_epochs sweep.values=[1,2,5] client.local_steps=0

runs the audited simulation once per value and seed (each in its own process, `sweep.parallel`
at a time), plus a reference run per seed: without the swept defense (`sweep.defense`, or a
`sweep.key` that names a defense's parameter), or with the key's configured value (any other
key; reused where it is one of the values). Every run of a seed uses that seed, so partitions,
initial weights and each client's batches (the victims) are the same at every value wherever
the key leaves them so (a key such as `client.batch_size` changes which images a batch holds).

It writes `sweep.csv` (one row per run and attack), `sweep.json` (the answer and breaking
points), `frontier.png` (test accuracy against leakage), `protocol.png` (per attack, PSNR and
recovery rate against the key, and utility) and `sweep.html`, and prints the answer: the
weakest value at which no attack recovers any image, and its cost in test accuracy against the
reference (fedattack.report.sweep defines both). List values from the weakest setting to the
strongest. Every value is validated before anything runs or is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

from fedattack import shutdown
from fedattack.arguments import add_config_args, load_config
from fedattack.attacks import ATTACKS
from fedattack.config import from_dict
from fedattack.config import load as load_config_file
from fedattack.defenses import DEFENSES
from fedattack.errors import ConfigError, FedattackError
from fedattack.report import sweep as report
from fedattack.report.console import Progress, add_plain_row, duration, plain_table
from fedattack.report.store import check_out, default_out_dir, load_run
from fedattack.schema import SECTIONS, Config
from fedattack.simulate import prepare
from fedattack.text import counted
from fedattack.validate import check_seed, first_repeat

NOT_SWEPT = ("sweep", "ray")  # sections whose keys are not an experiment's

# keys the run reads only in some configurations: key -> (in force?, what puts it in force)
IN_FORCE_WHEN: dict[str, tuple[Any, str]] = {
    "client.local_epochs": (lambda c: c.client.local_steps == 0, "client.local_steps=0 (clients then train epochs)"),
    "partition.alpha": (lambda c: c.partition.name in ("dirichlet", "inner_dirichlet"),
                        "partition.name=dirichlet or inner_dirichlet"),
    "partition.shards_per_client": (lambda c: c.partition.name == "shards", "partition.name=shards"),
    "partition.classes_per_client": (lambda c: c.partition.name == "pathological", "partition.name=pathological"),
    "partition.class_assignment": (lambda c: c.partition.name == "pathological", "partition.name=pathological"),
    "model.init_scale": (lambda c: c.model.init == "uniform", "model.init=uniform"),
}


def split_key(key: str) -> tuple[str, str]:
    """(section, parameter) of a dotted key; a plug-in's section may be its import path, dots
    and all (`mypkg.defenses:halve.factor`)."""
    section, _, name = key.rpartition(".") if ":" in key else key.partition(".")
    return section, name


def resolve_key(cfg: Config) -> tuple[str, str | None]:
    """(the dotted key to sweep, the defense it switches on or None)."""
    s = cfg.sweep
    if s.key and s.defense:
        raise ConfigError("sweep.key", "give sweep.key or sweep.defense (with sweep.param), not both (where a config "
                                       "file sets one, sweep.defense=null or sweep.key=null clears it)")
    if s.defense:
        try:
            spec = DEFENSES.get(s.defense)
        except ConfigError as exc:  # the registry names client.defenses
            raise ConfigError("sweep.defense", exc.message) from None
        param = s.param or spec.main_param
        names = [f.name for f in fields(spec.params)]
        if param not in names:
            raise ConfigError("sweep.param", f"'{param}' is not a parameter of {s.defense}; allowed: {', '.join(names)}")
        return f"{s.defense}.{param}", s.defense
    if not s.key:
        raise ConfigError("sweep.key", "name the config key to sweep (e.g. sweep.key=client.local_epochs), or a "
                                       f"defense with sweep.defense; defenses: {', '.join(DEFENSES.names())}")
    if s.param:
        raise ConfigError("sweep.param", "goes with sweep.defense; with sweep.key, name the parameter in the key")
    if s.key == "seed":
        raise ConfigError("sweep.key", "the seed is swept with sweep.seeds=[...]: every value runs at each seed, and "
                                       "the answer holds over all of them")
    if s.key == "audit.attacks":
        raise ConfigError("sweep.key", "'audit.attacks' chooses the attacks, not the deployment: every run of a sweep "
                                       "audits with all of audit.attacks, and the answer is given per attack")
    section, name = split_key(s.key)
    if section == "victim":
        raise ConfigError("sweep.key", f"'{s.key}' chooses the one update of `fedattack attack`; a sweep runs "
                                       "`fedattack run`, which audits every sampled client")
    sections = [k for k in SECTIONS if k not in NOT_SWEPT]
    if section in sections:
        allowed = [f.name for f in fields(SECTIONS[section])]
        if name not in allowed:
            raise ConfigError("sweep.key", f"'{s.key}' is not a config key; keys of {section}: {', '.join(allowed)}")
        return s.key, None
    for registry, kind in ((DEFENSES, "defense"), (ATTACKS, "attack")):
        if section in registry.names() or (":" in section and registry.find(section) is not None):
            allowed = [f.name for f in fields(registry.get(section).params)]
            if name not in allowed:
                raise ConfigError("sweep.key", f"'{s.key}' is not a parameter of the {kind} {section}; allowed: "
                                               f"{', '.join(allowed) or '(none)'}")
            if kind == "attack" and section not in cfg.audit.attacks:
                raise ConfigError("sweep.key", f"'{s.key}': {section} is not in audit.attacks "
                                               f"({', '.join(cfg.audit.attacks) or 'none'})")
            return s.key, section if kind == "defense" else None
    raise ConfigError("sweep.key", f"'{s.key}' is not a config key; sections: {', '.join(sections)}, or an attack's "
                                   "or defense's name (e.g. gaussian.sigma) or import path "
                                   "(mypkg.defenses:halve.factor)")


def _with(raw: dict, key: str, value: Any) -> dict:
    section, name = split_key(key)
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raw[section] = {}
    raw[section][name] = value
    return raw


def _build(raw: dict, key: str, value: Any, what: str) -> Config:
    raw["sweep"] = {}
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise _at_value(exc, key, f"{what} {report.fmt_value(value)}") from None


def _at_value(exc: ConfigError, key: str, what: str) -> ConfigError:
    """`exc`, raised by one run of the sweep, as the sweep's error naming the value."""
    same = exc.field == key or key.endswith(f":{exc.field}")  # a plug-in's section: mypkg.mod:halve.factor
    detail = exc.message if same else str(exc)
    return ConfigError("sweep.values", f"{what} for {key}: {detail}")


def check_runs(key: str, runs: list[tuple[report.SweepRun, Config]]) -> None:
    """Every run's own checks, as `fedattack run` makes them before it starts (the data, its
    partitions at that seed, the model, this machine, the audit): a value that fails one is
    refused before the sweep starts, not found failed in its log."""
    several = len({r.seed for r, _ in runs}) > 1
    for r, c in runs:
        what = ("the reference" if r.reference else f"value {report.fmt_value(r.value)}") + (
            f" at seed {r.seed}" if several else "")
        try:
            prepare(c, out_dir=Path("/nonexistent-fedattack-check"))  # checked, never written
        except ConfigError as exc:
            raise _at_value(exc, key, what) from None


def plan(cfg: Config) -> tuple[str, list[tuple[report.SweepRun, Config]], str]:
    """(key, one (run, config) per value and seed plus the reference runs, the reference in words).
    Validates the key, every value and every seed first."""
    s = cfg.sweep
    key, defense = resolve_key(cfg)
    rule = IN_FORCE_WHEN.get(key)
    if rule is not None and not rule[0](cfg):
        raise ConfigError("sweep.key", f"{key} changes nothing in this config: it is read only with {rule[1]}; "
                                       "every run would be the same")
    if cfg.audit_off():
        key, what = ("audit.every", "is 0") if not cfg.audit.every else ("audit.attacks", "is empty")
        raise ConfigError(key, f"{what}: no run of the sweep would audit an update, and a sweep maps "
                               "leakage (allowed: audit.every of 1 or more, and at least one attack)")
    if not s.values:
        raise ConfigError("sweep.values", f"give the values of {key} to sweep, weakest first, e.g. sweep.values=[1,2,5]")
    twice = first_repeat(report.fmt_value(v) for v in s.values)
    if twice is not None:
        raise ConfigError("sweep.values", f"{twice} is listed twice; each value runs once per seed (sweep.seeds "
                                          "repeats them)")
    cores = os.cpu_count() or 1
    if not 1 <= s.parallel <= cores:  # each run starts its own Ray instance and its own attack workers
        raise ConfigError("sweep.parallel", f"runs this many audited runs at once, each with its own Ray instance; "
                                            f"this machine has {counted(cores, 'core')}: allowed: 1 to {cores}, "
                                            f"got {s.parallel}")
    for x in s.seeds:
        check_seed("sweep.seeds", x)
    seeds = list(dict.fromkeys(s.seeds)) or [cfg.seed]
    base = cfg.to_dict()
    if defense is not None:
        on = [*base["client"]["defenses"]] + ([] if defense in base["client"]["defenses"] else [defense])
        reference = f"reference run without {defense}"
    else:
        configured = configured_value(cfg, key)
        reference = f"reference run at the configured {key}={report.fmt_value(configured)}"
    configs = []
    for v in s.values:
        raw = _with(cfg.to_dict(), key, v)
        if defense is not None:
            raw["client"]["defenses"] = on
        configs.append((v, _build(raw, key, v, "value")))
    runs: list[tuple[report.SweepRun, Config]] = []
    reuse = False
    if defense is not None:
        ref_raw = cfg.to_dict()
        ref_raw["client"]["defenses"] = [d for d in ref_raw["client"]["defenses"] if d != defense]
        ref_raw.pop(defense, None)  # its section goes with it (a defense listed in the config has one)
        ref_cfg = _build(ref_raw, key, None, "the reference")
    else:
        ref_cfg = _build(cfg.to_dict(), key, configured, "the configured value")
        reuse = any(report.fmt_value(v) == report.fmt_value(configured) for v in s.values)
    for seed in seeds:
        for i, (v, c) in enumerate(configs):
            label = f"{key}={report.fmt_value(v)}"
            if reuse and report.fmt_value(v) == report.fmt_value(configured):
                label += " (as configured)"
            runs.append((report.SweepRun(value=v, seed=seed, label=label, run_dir=Path()), _seeded(c, seed)))
        if not reuse:
            runs.append((report.SweepRun(value=configured if defense is None else None, seed=seed, label="reference",
                                         run_dir=Path(), reference=True),
                         _seeded(ref_cfg, seed)))
    return key, runs, reference


def _place(runs: list[tuple[report.SweepRun, Config]], out_dir: Path) -> None:
    """Each run's directory under the sweep's `out_dir`."""
    for i, (r, _) in enumerate(runs):
        r.run_dir = out_dir / "runs" / f"{i:02d}_{_safe(r.label if not r.reference else 'reference')}_seed{r.seed}"


def is_sweep_dir(path: Path) -> bool:
    """A sweep's directory: its config and its answer, or (stopped before any run finished) its runs."""
    return (path / "config.yaml").is_file() and ((path / "sweep.json").is_file() or (path / "runs").is_dir())


def rerender(out_dir: Path, progress: Progress | None = None) -> report.Answer:
    """Rewrite a sweep directory's sweep.csv, sweep.json, plots and sweep.html from its runs as
    they stand (`fedattack report SWEEP_DIR`): runs finished since, by hand or by a rerun, count."""
    progress = progress or Progress()
    out_dir = Path(out_dir).resolve()  # sweep.csv and sweep.json name each run by its absolute path, as the sweep did
    cfg = load_config_file(out_dir / "config.yaml")
    key, runs, reference = plan(cfg)
    _place(runs, out_dir)
    answer, table = _write_answer(cfg, key, [r for r, _ in runs], sorted({r.seed for r, _ in runs}), reference,
                                  out_dir)
    print_table(table, f"sweep of {key}", progress, order=None if cfg.sweep.defense else mapped_values(cfg, key))
    progress.answer(f"answer: {answer.sentence()}")
    progress.answer(f"report: {out_dir / 'sweep.html'}")
    return answer


def _seeded(cfg: Config, seed: int) -> Config:
    c = cfg.copy()
    c.seed = seed
    return c


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "-" for ch in text)[:60]


def _run_one(cfg: Config, run_dir: Path, log: Path, verbose: bool = False) -> int | None:
    """One run as its own `fedattack run` process (`verbose`: with Flower's and Ray's logs in its
    log file); its exit code, or None where the sweep was asked to stop before it started. The
    run is in a session of its own, so a signal reaches it once, from here: a stop request is
    passed on to it (it stops cleanly, keeping its results)."""
    if shutdown.requested() is not None:
        return None
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(cfg.to_yaml())
    with log.open("w") as f:
        argv = [sys.executable, "-m", "fedattack", "run", str(cfg_path), "--out", str(run_dir), "--quiet"]
        proc = subprocess.Popen(argv + (["--verbose"] if verbose else []), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        passed_on = False
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                req = shutdown.requested()
                if req is not None and not passed_on:
                    proc.send_signal(req.signum or signal.SIGTERM)
                    passed_on = True


def _estimate(total: int, mean: float | None, parallel: int, elapsed: float) -> str:
    """The time left if every run takes as long as the finished ones did on average (runs
    often grow with the swept value, so this is a floor); once past it, says so."""
    if mean is None:
        return "; no run finished yet"
    left = total * mean / max(1, min(parallel, total)) - elapsed
    return f"; about {duration(left)} left" if left > 0 else "; past the estimate from the finished runs"


def run_sweep(cfg: Config, *, out_dir: Path, quiet: bool = False, verbose: bool = False) -> report.Answer:
    progress = Progress(quiet=quiet)
    key, runs, reference = plan(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(cfg.to_yaml())
    _place(runs, out_dir)
    seeds = sorted({r.seed for r, _ in runs})
    progress.print(f"sweep of {key}: {counted(len(cfg.sweep.values), 'value')} x {counted(len(seeds), 'seed')}"
                   f"{' + a ' + reference if any(r.reference for r, _ in runs) else ''}: {len(runs)} audited runs, "
                   f"{min(cfg.sweep.parallel, len(runs))} at a time; {out_dir}")
    done: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def status() -> None:  # a line at least every 30 s while runs go on
        while not stop.wait(progress.status_every or 30):
            with lock:
                n = len(done)
                mean = sum(done) / n if n else None
            elapsed = time.monotonic() - started
            progress.print(f"sweep: {n}/{len(runs)} runs done, {duration(elapsed)} in"
                           f"{_estimate(len(runs), mean, cfg.sweep.parallel, elapsed)}")

    def one(i: int) -> int | None:
        r, c = runs[i]
        t0 = time.perf_counter()
        r.exit_code = _run_one(c, r.run_dir, r.run_dir.parent / f"{r.run_dir.name}.log", verbose=verbose)
        if r.exit_code is None:  # the sweep was stopped before this run started
            return None
        with lock:
            done.append(time.perf_counter() - t0)
            try:  # the answer so far is on disk as soon as a run ends: an interrupted sweep keeps it
                _write_answer(cfg, key, [x for x, _ in runs], seeds, reference, out_dir)
            except Exception as exc:  # noqa: BLE001 - the final write below tries again
                progress.print(f"sweep: the answer so far could not be written ({type(exc).__name__}: {exc})")
        ended = ("done" if r.exit_code == 0 else "stopped with the sweep" if shutdown.requested() is not None
                 else f"failed (exit {r.exit_code}, see its log)")
        progress.print(f"  {r.label}, seed {r.seed}: {ended} in {time.perf_counter() - t0:.0f} s")
        return r.exit_code

    ticker = threading.Thread(target=status, daemon=True)
    if not quiet:
        ticker.start()
    try:
        with shutdown.cooperative(), ThreadPoolExecutor(max_workers=cfg.sweep.parallel) as pool:
            list(pool.map(one, range(len(runs))))  # a signal stops the runs cleanly (see _run_one)
    finally:
        stop.set()
    answer, table = _write_answer(cfg, key, [r for r, _ in runs], seeds, reference, out_dir)
    print_table(table, f"sweep of {key}", progress, order=None if cfg.sweep.defense else mapped_values(cfg, key))
    progress.answer(f"answer: {answer.sentence()}")
    progress.answer(f"report: {out_dir / 'sweep.html'}")
    return answer


def configured_value(cfg: Config, key: str) -> Any:
    """The config's own value of the swept `key` (section.name), which the reference run keeps."""
    section, name = split_key(key)
    return (cfg.to_dict().get(section) or {}).get(name)


def mapped_values(cfg: Config, key: str) -> list:
    """The values the protocol map and the per-value table show: the swept ones and, for a
    config key whose configured value is not among them, the configured value too (the
    reference run measured it), in its place where the values are numbers in order, else last."""
    values = list(cfg.sweep.values)
    if cfg.sweep.defense:
        return values
    configured = configured_value(cfg, key)
    if configured is None or any(report.fmt_value(v) == report.fmt_value(configured) for v in values):
        return values
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*values, configured])
    if numeric and values in (sorted(values), sorted(values, reverse=True)):
        ascending = values == sorted(values)
        at = next((i for i, v in enumerate(values) if (v > configured if ascending else v < configured)), len(values))
        return [*values[:at], configured, *values[at:]]
    return [*values, configured]


def _write_answer(cfg: Config, key: str, swept: list, seeds: list[int], reference: str, out_dir: Path
                  ) -> tuple[report.Answer, list[dict]]:
    """sweep.csv, sweep.json, the plots and sweep.html from the runs finished so far (a run that
    has not, or did not, finish is named as left out)."""
    for r in swept:
        if r.summary is None and (r.run_dir / "summary.json").is_file():  # written last: the run ended
            run = load_run(r.run_dir)
            if run.interrupted is None:  # a run stopped early answers for its rounds only: left out
                r.summary = run.summary()
    answer = report.analyze(swept, key=key, values=list(cfg.sweep.values), seeds=seeds, reference=reference)
    table = report.rows(swept, answer)
    report.write_csv(out_dir / "sweep.csv", table)
    report.write_json(out_dir / "sweep.json", answer, table)
    values = mapped_values(cfg, key)
    points = report.per_value(table, values)
    report.plot_frontier(out_dir / "frontier.png", points, answer, report.reference_runs(swept))
    report.plot_protocol(out_dir / "protocol.png", points, values, key)
    report.render_html(out_dir / "sweep.html", answer=answer, table=table, points=points, runs=swept,
                       plots=["frontier.png", "protocol.png"], values=values)
    return answer, table


def print_table(table: list[dict], title: str, progress: Progress, order: list | None = None) -> None:
    """The per-run table; with `order` (a key sweep's mapped values), its rows in that order, the
    reference run in its value's place as sweep.html has it. Each attack's breaking point, one
    value over all seeds, follows on one line (in a column it read as each row's own)."""
    if order is not None:
        place = {report.fmt_value(v): i for i, v in enumerate(order)}
        table = sorted(table, key=lambda r: place.get(r["value"], len(place)))

    def f(x, fmt):
        return "-" if x is None or (isinstance(x, float) and x != x) else format(x, fmt)

    t = plain_table(title, ["value", "seed", "attack", "test acc", "PSNR dB", "margin dB", "images recovered",
                            "updates leaked"])
    for r in table:
        ref = f"reference ({r['value']})" if r.get("value") else "reference"
        add_plain_row(t, [ref if r.get("reference") else r["value"], r["seed"], r["attack"],
                          f(r.get("test_acc"), ".3f"), f(r.get("psnr"), ".2f"), f(r.get("margin"), "+.2f"),
                          f"{r.get('images_recovered', '-')}/{r.get('images', '-')}",
                          f"{r.get('updates_leaked', '-')}/{r.get('updates', '-')}"])
    progress.console.print(t)
    points = {r["attack"]: r["breaking_point"] for r in table if r.get("breaking_point")}
    if points:
        progress.console.print("breaking point (the first value from which on the attack recovers no image in any "
                               "seed): " + "; ".join(f"{a} {p}" for a, p in sorted(points.items())), highlight=False)


def cmd_sweep(ns: argparse.Namespace) -> int:
    cfg = load_config(ns, command="sweep")
    key, runs, _ = plan(cfg)  # validate the key, every value and seed before anything is written
    check_runs(key, runs)
    out = Path(ns.out or default_out_dir("sweep-"))
    check_out(out)
    answer = run_sweep(cfg, out_dir=out, quiet=ns.quiet, verbose=ns.verbose)
    req = shutdown.requested()
    if req is not None:
        Progress(quiet=ns.quiet).answer(f"sweep stopped by {req.reason}: the answer above counts the runs that "
                                        f"finished; `fedattack report {out}` re-renders it once more have")
        raise shutdown.Stopped(req.reason, req.signum)
    if answer.failed_runs:
        raise FedattackError(f"sweep: {counted(len(answer.failed_runs), 'run')} failed; "
                             f"see the logs under {out / 'runs'}")
    return 0


def _sweep_parser(p: argparse.ArgumentParser) -> None:
    add_config_args(p, "sweep")
    p.add_argument("--verbose", action="store_true", help="write Flower's and Ray's logs into each run's log file")


COMMANDS = {"sweep": ("privacy-utility frontier and protocol map: one audited run per value of a config key",
                      _sweep_parser, cmd_sweep)}
