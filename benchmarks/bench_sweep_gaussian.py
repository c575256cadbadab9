"""`fedattack sweep` on the default config: Gaussian noise on the clients' updates (in gradient
units, DLG's defense) at sigma 0.01, 0.1 and 1.0, two seeds each, plus the reference run without
noise per seed; every run is the default run (5 rounds of FedAvg, every sampled client audited
by idlg, dlg and invgrad).

Per value: the final test accuracy (mean and standard deviation over the seeds), and per attack
the audited updates it leaked and its mean PSNR margin over the blank guess; the last row is the
sweep's answer as `fedattack sweep` prints it. Set SWEEP_OUT=DIR to keep the sweep directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool = False) -> list[dict]:
    values = [0.1] if quick else [0.01, 0.1, 1.0]
    seeds = [0] if quick else [0, 1]
    extra = ["fl.rounds=2", "audit.attacks=[idlg]"] if quick else []
    keep = os.environ.get("SWEEP_OUT")
    with tempfile.TemporaryDirectory(prefix="fa-sweep-") as d:
        out = Path(keep) if keep else Path(d) / "sweep"
        proc = subprocess.run([sys.executable, "-m", "fedattack", "sweep", "sweep.defense=gaussian",
                               f"sweep.values={json.dumps(values)}", f"sweep.seeds={json.dumps(seeds)}", *extra,
                               "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True)
        if not (out / "sweep.json").is_file():
            return [{"value": "(sweep failed)", "error": (proc.stderr or proc.stdout).strip()[-300:]}]
        data = json.loads((out / "sweep.json").read_text())
    rows = []
    table = data["rows"]
    for label, value in [("no noise (reference)", None)] + [(f"sigma {v}", str(v)) for v in values]:
        mine = [r for r in table if (r["reference"] if value is None else not r["reference"] and r["value"] == value)
                and not str(r["attack"]).startswith("(")]
        if not mine:
            continue
        accs = {r["seed"]: r["test_acc"] for r in mine if r["test_acc"] is not None}
        row = {"setting": label, "seeds": len(accs),
               "test acc": f"{np.mean(list(accs.values())):.3f} ± {np.std(list(accs.values()), ddof=1) if len(accs) > 1 else 0:.3f}"}
        for attack in sorted({r["attack"] for r in mine}):
            a = [r for r in mine if r["attack"] == attack]
            row[f"{attack} leaked"] = f"{sum(r['updates_leaked'] for r in a)} of {sum(r['updates'] for r in a)}"
            margins = [r["margin"] for r in a if r["margin"] is not None]
            row[f"{attack} margin dB"] = round(float(np.mean(margins)), 2) if margins else None
        rows.append(row)
    rows.append({"setting": "answer", "test acc": data["answer"]})
    return rows
