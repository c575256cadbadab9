"""Results, typed: the scores of one reconstruction, one attack job's result, one round's
statistics, the facts that head a run, and the per-image and per-client views of exposure.

The audit produces these and the report consumes them in memory; the run directory
(fedattack.report) writes them as leakage.csv and rounds.csv and reads them back with their
types. A JobResult holds its numbers at the precision the run directory records (`DIGITS`),
so a run's summary and `fedattack report` of the same directory agree to the last digit.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedattack.text import counted, plural

NAN = math.nan  # one object: results read back compare equal to the ones written

# decimals the run directory keeps of each number of a job result
DIGITS = {"psnr": 2, "ssim": 4, "mse": 5, "label_acc": 4, "seconds": 2, "epsilon": 4, "baseline_psnr": 2,
          "baseline_ssim": 4, "lpips": 4}
SCORE_FIELDS = ("psnr", "ssim", "mse", "label_acc", "baseline_psnr", "baseline_ssim", "lpips")

STATUSES = ("ok", "failed", "error")  # error: the attack raised something other than an attack failure


def rounded(x: float, digits: int) -> float:
    return x if x is None or math.isnan(x) else round(float(x), digits)


@dataclass
class ImageScores:
    """Per ground-truth image: the matched reconstruction and its scores (-1: unmatched).

    The baselines are what the best constant (flat grey) image scores against the same true
    image: a reconstruction that does no better than them shows nothing of the image."""

    match: np.ndarray  # (N_true,) index into reconstructions, -1 where none
    psnr: np.ndarray
    ssim: np.ndarray
    mse: np.ndarray
    baseline_psnr: np.ndarray | None = None  # best flat image's PSNR against each true image
    baseline_ssim: np.ndarray | None = None  # best flat image's SSIM
    recovered: np.ndarray | None = None  # bool: the image counts as recovered (see fedattack.metrics.score)
    index: np.ndarray | None = None  # dataset index of each true image (-1: unknown)
    lpips: np.ndarray | None = None  # LPIPS distance (NaN: not computed)
    owner: tuple[int | str, ...] = ()  # the client each true image came from, where the truth says (a sum's parts)

    def __post_init__(self) -> None:
        n = len(self.psnr)
        if self.baseline_psnr is None:
            self.baseline_psnr = np.full(n, NAN)
        if self.baseline_ssim is None:
            self.baseline_ssim = np.full(n, NAN)
        if self.recovered is None:
            self.recovered = np.zeros(n, dtype=bool)
        if self.index is None:
            self.index = np.full(n, -1, dtype=np.int64)
        if self.lpips is None:
            self.lpips = np.full(n, NAN)


@dataclass
class Score:
    """How much one reconstruction leaked (means over the true images, after matching)."""

    psnr: float = NAN
    ssim: float = NAN
    mse: float = NAN
    label_acc: float = NAN
    recovered: int = 0  # true images counted as recovered (fedattack.metrics.score states the rule)
    num_images: int = 0
    baseline_psnr: float = NAN  # the best flat image's PSNR on the same images, averaged like `psnr`
    baseline_ssim: float = NAN  # the best flat image's SSIM, averaged like `ssim`
    lpips: float = NAN  # mean LPIPS distance (lower: closer); NaN where not computed
    per_image: ImageScores | None = field(default=None, repr=False, compare=False)

    @property
    def margin(self) -> float:
        """PSNR in dB above what a blank (best flat) guess reaches on the same images."""
        if math.isnan(self.psnr) or math.isnan(self.baseline_psnr):
            return NAN
        return round(self.psnr - self.baseline_psnr, DIGITS["psnr"])

    @property
    def success(self) -> bool:
        """A leak: at least one private image counted as recovered."""
        return self.recovered > 0

    def rounded(self) -> "Score":
        """This score at the precision of the run directory."""
        return replace(self, **{k: rounded(getattr(self, k), DIGITS[k]) for k in SCORE_FIELDS})


@dataclass
class JobResult:
    """One attack on one update: status, score, and what the report needs to show it."""

    round: int
    client: int | str  # partition id, or "aggregate"
    attack: str
    defense: str  # the defenses in force, e.g. "clip(bound=1.0)+gaussian(sigma=0.01)" or "none"
    status: str  # one of STATUSES
    seconds: float
    score: Score = field(default_factory=Score)
    adaptive: bool = False
    scope: str = "client"  # client | aggregate
    device: str = "cpu"
    epsilon: float = NAN  # the client's reported DP epsilon (report metadata only)
    error: str = ""  # one line: why the job did not succeed
    traceback: str = ""  # the whole story of a failure (the run directory keeps it in errors/)
    unscored: str = ""  # one line: why the job has no scores (no ground truth from the client); "" when scored
    truth_pixels: np.ndarray | None = field(default=None, repr=False, compare=False)  # (N, C, H, W) in [0, 1]
    recon_pixels: np.ndarray | None = field(default=None, repr=False, compare=False)  # matched to truth order
    # the recovered labels; where recon_pixels is matched to the truth, in the same order, -1 where
    # no reconstruction matched that private image (recon_matched False: its image is flat grey)
    recon_labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    recon_matched: np.ndarray | None = field(default=None, repr=False, compare=False)
    # what an attack recovered inside the model rather than at its input (analytic's
    # feature_layer: the inputs of that layer, e.g. PRECODE's bottleneck), one row per sample
    recon_features: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.score = self.score.rounded()
        self.seconds = rounded(self.seconds, DIGITS["seconds"])
        self.epsilon = rounded(self.epsilon, DIGITS["epsilon"])

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def success(self) -> bool:
        return self.ok and self.score.success

    @property
    def scored(self) -> bool:
        """Whether the scores mean anything: False where the client sent no ground truth."""
        return not self.unscored

    @property
    def labels_text(self) -> str:
        """The recovered labels for a log line: listed, or as counts per class past eight."""
        if self.recon_labels is None:
            return "-"
        labels = sorted(int(v) for v in np.asarray(self.recon_labels).reshape(-1) if v >= 0)
        if len(labels) <= 8:
            return " ".join(map(str, labels))
        counts = Counter(labels)
        return ", ".join(f"{c} x{k}" for c, k in sorted(counts.items())) + f" ({len(labels)} in all)"

    @property
    def label(self) -> str:
        """The attack as summaries name it: its adaptive variant apart."""
        return self.attack + (" (adaptive)" if self.adaptive else "")

    @property
    def row_id(self) -> str:
        """A name for this result's files (gallery, traceback), unique within a run; portable (an
        attack named by import path, `pkg.mod:fn`, has no colon in it)."""
        tag = "_adaptive" if self.adaptive else ""
        return re.sub(r"[^\w.-]", "_", f"r{int(self.round):03d}_c{self.client}_{self.attack}{tag}")


@dataclass
class RoundStats:
    """What the server counts while a round runs (replies, errors, the jobs it submitted)."""

    round: int
    started: float  # time.perf_counter() when the round began
    replies: int = 0
    errors: int = 0
    train_loss: float = NAN
    audited_clients: int = 0
    jobs: int = 0
    scope: str = "client"  # client | aggregate (SecAgg: the server saw the sum only)
    epsilon: float = NAN  # DP-SGD / DP: the largest epsilon reported this round
    error: str = ""  # the first client error's reason this round, in one line

    def result(self, *, test_loss: float, test_acc: float, now: float) -> "RoundResult":
        return RoundResult(round=self.round, train_loss=self.train_loss, test_loss=test_loss, test_acc=test_acc,
                           replies=self.replies, errors=self.errors, audited_clients=self.audited_clients,
                           jobs=self.jobs, scope=self.scope, epsilon=self.epsilon, seconds=now - self.started,
                           error=self.error)


@dataclass(frozen=True)
class RoundResult:
    """One finished round: training, evaluation and audit counts."""

    round: int
    train_loss: float = NAN
    test_loss: float = NAN
    test_acc: float = NAN
    replies: int = 0
    errors: int = 0
    audited_clients: int = 0
    jobs: int = 0
    scope: str = "client"
    epsilon: float = NAN
    seconds: float = NAN
    error: str = ""  # the first client error's reason this round, in one line ("" where none failed)


def describe_defenses(raw: dict) -> str:
    """'none' or e.g. 'clip(bound=1.0)+gaussian(sigma=0.01)': the defenses a config (as a
    dict) puts in force, each with its parameters; an app's record names them in its protocol,
    and SecAgg+ by what its server saw (`server.sees`)."""
    named = [(name, raw.get(name) or {}) for name in (raw.get("client") or {}).get("defenses") or []]
    named += [(d.get("name"), {k: v for k, v in d.items() if k != "name"})
              for d in (raw.get("protocol") or {}).get("defenses") or [] if isinstance(d, dict)]
    parts = []
    for name, params in named:
        args = ",".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else ""
        parts.append(f"{name}({args})" if args else str(name))
    if (raw.get("server") or {}).get("sees") == "sums":
        parts.append("SecAgg+")
    return "+".join(parts) or "none"


STRETCHED = ("iterations", "restarts")  # the budgets calibration may double after tuning, in this order
SWITCHES = ("rebalance",)  # an attack's on/off settings calibration tries flipped after tuning, one at a time


def describe_calibration(tuned: dict, held_out: dict) -> str:
    """What a calibration chose, in words: the tuned values (e.g. 'tv=0.03, iterations=2000'),
    or the configured parameters, and why where the best candidate, a larger budget (more
    iterations or restarts) or a flipped switch lost on fresh updates. A rejected candidate's
    values are not in `tuned`; what was chosen after it (a budget, a switch) is."""
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.items())
    lost = "".join(f" ({(held_out.get(k) or {}).get('count')} {k} lost on fresh updates)" for k in STRETCHED
                   if (held_out.get(k) or {}).get("confirmed") is False)
    lost += "".join(f" ({k}={(held_out.get(k) or {}).get('value')} lost on fresh updates)" for k in SWITCHES
                    if (held_out.get(k) or {}).get("confirmed") is False)
    if (held_out.get("shrink") or {}).get("confirmed") is False:
        lost += f" (shrink={held_out['shrink'].get('amount')} lost on fresh updates)"
    if held_out.get("confirmed") is False:
        return ("the configured parameters (the best candidate lost on fresh updates)" + (f"; {text}" if text else "")
                + lost)
    return (text or "the configured parameters") + lost


def unsimulated(defenses) -> str:
    """A calibration's note on the defenses in force that its simulated updates leave out (those
    acting inside training: DP-SGD, mixup, ...), or "" where there are none."""
    names = list(defenses or [])
    return (f"; {', '.join(names)} left out of the simulated updates (acting inside training, "
            f"{plural(len(names), 'it is', 'they are')} not simulated)" if names else "")


def optimizer_words(*, optimizer: str = "sgd", momentum: Any = 0, nesterov: bool = False,
                    weight_decay: Any = 0) -> list[str]:
    """What a protocol says of its optimizer beside steps, batch and lr ([] for plain SGD):
    'adam', 'momentum 0.9, Nesterov', 'weight decay 0.01'. A value may be a number or words
    (where it is read from a train config)."""
    def text(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    words = ([optimizer] if optimizer != "sgd" else
             [f"momentum {text(momentum)}{', Nesterov' if nesterov else ''}"] if momentum else [])
    return words + ([f"weight decay {text(weight_decay)}"] if weight_decay else [])


def _app_protocol(p: dict) -> str:
    """An app's TrainingProtocol (config.yaml's `protocol`) in words; a field read every round
    from the train config is named by its key there."""
    keys = p.get("config_keys") or {}

    def value(name: str) -> str:
        return f"from the train config's '{keys[name]}'" if name in keys else str(p.get(name))

    steps = "local_steps" in keys or p.get("local_steps") is not None
    field = "local_steps" if steps else "local_epochs"
    unit = "local step" if steps else "local epoch"  # as RunHeader.from_config counts
    n = p.get(field)
    count = f"{unit}s {value(field)}" if field in keys else f"{n} {plural(1 if str(n) == '1' else 2, unit)}"

    def given(name: str) -> Any:  # the value, its train-config key in words, or 0 where neither is set
        return value(name) if name in keys else float(p.get(name) or 0)

    how = ", ".join(optimizer_words(optimizer=str(p.get("optimizer", "sgd")), momentum=given("momentum"),
                                    nesterov=bool(p.get("nesterov")), weight_decay=given("weight_decay")))
    mu = given("proximal_mu")
    fedprox = f", FedProx mu {mu if isinstance(mu, str) else format(mu, 'g')}" if mu else ""
    return f"{count} of batch {value('batch_size')} at lr {value('lr')}{f' ({how})' if how else ''}{fedprox}"


def _budget(attack: str, params: Any) -> str:
    """An attack's iteration budget in words, from its config section: Adam or L-BFGS steps,
    or, for a CMA-ES search (ggl's default), loss evaluations."""
    if not isinstance(params, dict):
        return ""
    if params.get("optimizer") == "cmaes" and "budget" in params:
        return f"{attack} {params['budget']} loss evaluations (CMA-ES)"
    if "iterations" not in params:
        return ""
    evals = params.get("max_iter")  # L-BFGS: objective evaluations per step (dlg, idlg)
    per_step = ("" if evals is None or params.get("optimizer", "lbfgs") != "lbfgs" else
                " (L-BFGS, one evaluation each)" if evals == 1 else f" (L-BFGS, up to {evals} evaluations each)")
    return f"{attack} {params['iterations']} iterations{per_step}"


@dataclass(frozen=True)
class RunHeader:
    """What a run was: the facts every summary and report starts with."""

    server_mode: str = "honest"
    dataset: str = ""
    model: str = ""
    strategy: str = ""
    seed: int = 0
    seeded: bool = True  # False: an app's AuditStrategy without a seed (the strategy's own sampling)
    defense: str = "none"  # the defenses in force, as describe_defenses writes them
    defenses: tuple[str, ...] = ()  # client.defenses, by name
    configured_rounds: int = 0  # fl.rounds
    num_clients: int = 0
    clients_per_round: int = 0
    configured_attacks: tuple[str, ...] = ()  # audit.attacks
    success_ssim: float = 0.5  # an image is recovered at SSIM >= this (and above the flat guess's SSIM)
    success_margin: float = 0.5  # dB: a row leaks only when its PSNR beats the flat baseline by more
    protocol: str = ""  # the clients' local training, in words
    budgets: tuple[str, ...] = ()  # the iteration budgets of the attacks that run, in words ("invgrad 400 iterations")
    calibrate: bool = False  # audit.calibrate was on (asked for; calibration.json says what it chose or skipped)
    raised: tuple[str, ...] | None = None  # the budgets calibration raised, in words ("fedavg to 60
    # iterations"), as calibration.json records them; None: not known (no calibration.json)
    batch_norm: bool = False  # the model trains BatchNorm layers (set by the run, which builds the model)
    num_classes: int = 0  # the model's classes (set by the run; 0: not known)
    sums: bool = False  # the server saw sums of updates only (an app's record under SecAgg+: server.sees)

    @classmethod
    def from_config(cls, raw: dict, *, idle: Collection[str] = ()) -> "RunHeader":
        """From a config as a dict (Config.to_dict(), or a run directory's config.yaml). `idle`:
        configured attacks the run's scope leaves out (fedattack.attacks.scope.idle_attacks):
        a budget says how hard an attack tried, and they did not."""
        fl, client, audit = raw.get("fl") or {}, raw.get("client") or {}, raw.get("audit") or {}
        steps = int(client.get("local_steps", 0) or 0)
        count, unit = (steps, "step") if steps else (client.get("local_epochs", 1), "epoch")
        how = ", ".join(optimizer_words(optimizer=str(client.get("optimizer", "sgd")),
                                        momentum=float(client.get("momentum", 0) or 0),
                                        nesterov=bool(client.get("nesterov")),
                                        weight_decay=float(client.get("weight_decay", 0) or 0)))
        how = f" ({how})" if how else ""
        mu = float(((fl.get("strategy_args") or {}).get("proximal_mu", 0) if fl.get("strategy") == "fedprox"
                    else client.get("proximal_mu", 0)) or 0)
        protocol = (f"{counted(count, 'local ' + unit)} of batch {client.get('batch_size', '?')} at lr "
                    f"{client.get('lr', '?')}{how}{f', FedProx mu {mu:g}' if mu else ''}" if client else
                    _app_protocol(raw["protocol"]) if isinstance(raw.get("protocol"), dict) else "")
        attacks = [str(a) for a in audit.get("attacks") or ()]
        return cls(server_mode=str((raw.get("server") or {}).get("mode", "honest")),
                   dataset=str((raw.get("data") or {}).get("name", "")),
                   model=str((raw.get("model") or {}).get("name", "")), strategy=str(fl.get("strategy", "")),
                   seed=int(raw.get("seed", 0)), seeded="unseeded" not in str(fl.get("sampling", "")),
                   defense=describe_defenses(raw),
                   defenses=tuple(str(d) for d in client.get("defenses") or ()), configured_rounds=int(fl.get("rounds", 0)),
                   num_clients=int(fl.get("num_clients", 0)), clients_per_round=int(fl.get("clients_per_round", 0)),
                   configured_attacks=tuple(attacks) if audit.get("every", 1) else (),  # audit.every=0: none ran
                   success_ssim=float(audit.get("success_ssim", 0.5)),
                   success_margin=float(audit.get("success_margin", 0.5)), protocol=protocol,
                   budgets=tuple(b for a in attacks if a not in idle and (b := _budget(a, raw.get(a)))),
                   calibrate=bool(audit.get("calibrate", False)),
                   sums=(raw.get("server") or {}).get("sees") == "sums")


@dataclass(frozen=True)
class Interruption:
    """Why a run stopped before it finished (summary.json's `interrupted`; None for a run that
    finished). Its results are every job that finished before the stop."""

    reason: str  # "SIGINT", "SIGTERM", or one line saying what failed
    signal: str | None = None  # the signal's name when a signal stopped the run
    abandoned_jobs: int = 0  # attack jobs cancelled unfinished (they have no row)

    def to_dict(self) -> dict:
        return {"reason": self.reason, "signal": self.signal, "abandoned_jobs": self.abandoned_jobs}

    @classmethod
    def from_dict(cls, raw: dict) -> "Interruption":
        return cls(reason=str(raw.get("reason", "")), signal=raw.get("signal"),
                   abandoned_jobs=int(raw.get("abandoned_jobs") or 0))


@dataclass(frozen=True)
class ImageRow:
    """One private image in one attack's result: images.csv's row, exposure's input."""

    round: int
    client: int | str  # whose update (partition id, or "aggregate")
    attack: str
    adaptive: bool
    position: int  # the image's place in the update (its column in the gallery)
    index: int  # dataset index (-1: unknown)
    owner: int | str  # the client holding this sample (partition id; "" where unknown)
    psnr: float
    ssim: float
    baseline_psnr: float
    baseline_ssim: float
    lpips: float
    recovered: bool

    @property
    def label(self) -> str:
        return self.attack + (" (adaptive)" if self.adaptive else "")


@dataclass(frozen=True)
class ExposureRow:
    """How much of one client's training data (client "all": every client's) the server has
    recovered in the updates of rounds 1..round, over every attack."""

    round: int
    client: int | str
    samples: int  # the client's training samples (its partition)
    audited: int  # distinct samples seen in audited updates so far
    recovered: int  # distinct samples recovered so far
    best_ssim: float = NAN  # the best SSIM of any reconstruction of the client's samples so far

    @property
    def share(self) -> float:
        """Recovered share of the client's training data."""
        return self.recovered / self.samples if self.samples else NAN
