"""The run directory's CSV files: typed results to rows and back.

leakage.csv, one row per round x client x attack: round, client, attack, defense, adaptive,
scope, status, psnr, baseline_psnr, margin, ssim, baseline_ssim, lpips, mse, label_acc,
success, recovered, num_images, seconds, device, epsilon, error (one line), traceback (the
file under errors/ that holds the whole traceback of a failed job), unscored (one line: why the
job has no scores, when the client sent no ground truth; empty when scored). `baseline_*` are the best
flat image's scores on the same images; `margin` is psnr - baseline_psnr in dB.

images.csv, one row per private image of every scored row: round, client, attack, adaptive,
position (its column in the gallery), index (dataset index), owner (the client holding it),
psnr, ssim, baseline_psnr, baseline_ssim, lpips, recovered.

clients.csv: client, samples (each client's training data). exposure.csv: round, client
(or "all"), samples, audited, recovered, share, best_ssim (fedattack.report.exposure).

An empty cell is a number that does not exist (NaN): no images, no labels, no epsilon, no LPIPS.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Callable, TypeVar

from fedattack.errors import FedattackError
from fedattack.results import NAN, ExposureRow, ImageRow, JobResult, RoundResult, Score, rounded

LEAKAGE_FIELDS = ["round", "client", "attack", "defense", "adaptive", "scope", "status", "psnr", "baseline_psnr",
                  "margin", "ssim", "baseline_ssim", "lpips", "mse", "label_acc", "success", "recovered",
                  "num_images", "seconds", "device", "epsilon", "error", "traceback",
                  "unscored"]
ROUND_FIELDS = ["round", "train_loss", "test_loss", "test_acc", "replies", "errors", "audited_clients", "jobs",
                "scope", "epsilon", "seconds", "error"]
IMAGE_FIELDS = ["round", "client", "attack", "adaptive", "position", "index", "owner", "psnr", "ssim",
                "baseline_psnr", "baseline_ssim", "lpips", "recovered"]
# The fields that order a finished run's rows (then every other field but the timings: see `put_in_order`)
LEAKAGE_ORDER = ("round", "client", "attack", "adaptive", "scope")
IMAGE_ORDER = ("round", "client", "attack", "adaptive", "position")
TIMING_FIELDS = ("seconds", "device")
CLIENT_FIELDS = ["client", "samples"]
EXPOSURE_FIELDS = ["round", "client", "samples", "audited", "recovered", "share", "best_ssim"]

T = TypeVar("T")


def _cell(x: float) -> float | str:
    return "" if x is None or math.isnan(x) else x


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else NAN


def _int(text: str | None) -> int:
    return int(float(text)) if text not in (None, "") else 0


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


def _client(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def leakage_row(r: JobResult, *, traceback_file: str = "") -> dict:
    s = r.score
    return {"round": r.round, "client": r.client, "attack": r.attack, "defense": r.defense, "adaptive": r.adaptive,
            "scope": r.scope, "status": r.status, "psnr": _cell(s.psnr), "baseline_psnr": _cell(s.baseline_psnr),
            "margin": _cell(s.margin), "ssim": _cell(s.ssim), "baseline_ssim": _cell(s.baseline_ssim),
            "lpips": _cell(s.lpips), "mse": _cell(s.mse), "label_acc": _cell(s.label_acc), "success": r.success,
            "recovered": s.recovered, "num_images": s.num_images, "seconds": _cell(r.seconds), "device": r.device,
            "epsilon": _cell(r.epsilon), "error": r.error, "traceback": traceback_file,
            "unscored": r.unscored}


def job_result(row: dict[str, str], *, traceback: str = "") -> JobResult:
    """A leakage.csv row back as the JobResult it was written from (without its images)."""
    score = Score(psnr=_float(row["psnr"]), ssim=_float(row["ssim"]), mse=_float(row["mse"]),
                  label_acc=_float(row["label_acc"]), recovered=_int(row["recovered"]),
                  num_images=_int(row["num_images"]), baseline_psnr=_float(row.get("baseline_psnr")),
                  baseline_ssim=_float(row.get("baseline_ssim")), lpips=_float(row.get("lpips")))
    return JobResult(round=int(row["round"]), client=_client(row["client"]), attack=row["attack"],
                     defense=row["defense"], status=row["status"], seconds=_float(row["seconds"]), score=score,
                     adaptive=_bool(row["adaptive"]), scope=row["scope"], device=row["device"],
                     epsilon=_float(row["epsilon"]), error=row["error"], traceback=traceback,
                     unscored=row.get("unscored") or "")


def round_row(r: RoundResult) -> dict:
    return {"round": r.round, "train_loss": _cell(r.train_loss), "test_loss": _cell(r.test_loss),
            "test_acc": _cell(r.test_acc), "replies": r.replies, "errors": r.errors,
            "audited_clients": r.audited_clients, "jobs": r.jobs, "scope": r.scope, "epsilon": _cell(r.epsilon),
            "seconds": _cell(r.seconds), "error": r.error}


def round_result(row: dict[str, str]) -> RoundResult:
    return RoundResult(round=int(row["round"]), train_loss=_float(row["train_loss"]),
                       test_loss=_float(row["test_loss"]), test_acc=_float(row["test_acc"]),
                       replies=_int(row["replies"]), errors=_int(row["errors"]),
                       audited_clients=_int(row["audited_clients"]), jobs=_int(row["jobs"]), scope=row["scope"],
                       epsilon=_float(row["epsilon"]), seconds=_float(row["seconds"]),
                       error=row.get("error") or "")  # run directories written before the column have none


def image_row(r: ImageRow) -> dict:
    return {"round": r.round, "client": r.client, "attack": r.attack, "adaptive": r.adaptive,
            "position": r.position, "index": r.index, "owner": r.owner, "psnr": _cell(r.psnr), "ssim": _cell(r.ssim),
            "baseline_psnr": _cell(r.baseline_psnr), "baseline_ssim": _cell(r.baseline_ssim),
            "lpips": _cell(r.lpips), "recovered": r.recovered}


def image_result(row: dict[str, str]) -> ImageRow:
    return ImageRow(round=int(row["round"]), client=_client(row["client"]), attack=row["attack"],
                    adaptive=_bool(row["adaptive"]), position=int(row["position"]), index=int(row["index"]),
                    owner=_client(row["owner"]), psnr=_float(row["psnr"]), ssim=_float(row["ssim"]),
                    baseline_psnr=_float(row["baseline_psnr"]), baseline_ssim=_float(row["baseline_ssim"]),
                    lpips=_float(row["lpips"]), recovered=_bool(row["recovered"]))


def exposure_row(r: ExposureRow) -> dict:
    return {"round": r.round, "client": r.client, "samples": r.samples, "audited": r.audited,
            "recovered": r.recovered, "share": _cell(rounded(r.share, 4)), "best_ssim": _cell(rounded(r.best_ssim, 4))}


def exposure_result(row: dict[str, str]) -> ExposureRow:
    return ExposureRow(round=int(row["round"]), client=_client(row["client"]), samples=_int(row["samples"]),
                       audited=_int(row["audited"]), recovered=_int(row["recovered"]),
                       best_ssim=_float(row["best_ssim"]))


def read_sizes(path: Path) -> dict[int | str, int]:
    """clients.csv back: client -> its number of training samples."""
    return {_client(r["client"]): int(r["samples"]) for r in read(path)}


def start(path: Path, fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writeheader()


def append(path: Path, fields: list[str], row: dict) -> None:
    append_many(path, fields, [row])


def append_many(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerows(rows)


def write(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Replace `path` with these rows at once (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _order_key(text: str | None) -> tuple:
    """Numbers by value, before the other cells in text order (client ids are numbers or names)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return 1, 0.0, text or ""
    return (0, value, "") if value == value else (1, 0.0, text)


def put_in_order(path: Path, fields: list[str], first: tuple[str, ...]) -> None:
    """Rewrite a table whose rows were appended as jobs finished (an order that changes from run
    to run) sorted by the `first` fields, then by every other field but the timings: two runs of
    one config then write the same file, whatever order their jobs finished in."""
    rest = [f for f in fields if f not in first and f not in TIMING_FIELDS]
    rows = read(path)
    write(path, fields, sorted(rows, key=lambda r: tuple(_order_key(r.get(f)) for f in (*first, *rest))))


def read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path, convert: Callable[[dict[str, str]], T], cut: list[str]) -> list[T]:
    """The rows of a table this package wrote, each through `convert`.

    A process killed while appending leaves its last line cut: fewer fields than the header, no
    line end, or a value that does not parse. That line is left out and named in `cut` (the
    rows before it are whole). A damaged line before the last is a FedattackError naming the
    file and line: the file was changed by hand."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        text = f.read()
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    lines = [(reader.line_num, fields) for fields in reader if fields]
    out: list[T] = []
    for k, (line, fields) in enumerate(lines):
        last = k == len(lines) - 1
        try:
            if last and not text.endswith(("\n", "\r")):
                raise ValueError("it has no line end")
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields where the header has {len(header)}")
            out.append(convert(dict(zip(header, fields))))
        except (ValueError, KeyError, TypeError) as exc:
            if not last:
                raise FedattackError(f"{path}: line {line} is damaged ({exc}); restore the file or remove the line")
            cut.append(f"{path.name} line {line} is incomplete ({exc}): the run stopped while writing it; left out")
    return out
