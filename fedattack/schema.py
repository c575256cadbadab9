"""The config's types: one dataclass per section, and `Config` holding them.

Besides the fixed sections, every configured attack and defense owns a top-level section
named after it (`dlg.optimizer=adam`, `gaussian.sigma=0.01`) holding that plug-in's own
parameter dataclass; `fedattack.config` fills them in when it loads a config.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from fedattack.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Frozen and hashable: a loaded dataset is cached per process under its DataConfig."""

    name: str = "lfw-subset"
    root: str | None = None
    image_size: int = 32
    channels: int | None = None  # None: the dataset's own (1 for grey, 3 for colour)
    download: bool = False
    test_fraction: float = 0.2  # held-out share for datasets without a test split
    image_key: str | None = None  # hf: datasets: image column (None: detected)
    label_key: str | None = None  # hf: datasets: label column (None: detected)


@dataclass
class PartitionConfig:
    name: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    min_size: int = 2
    classes_per_client: int = 2  # pathological
    class_assignment: str = "random"  # pathological: random | deterministic | first-deterministic


@dataclass
class ModelConfig:
    name: str = "lenet"
    activation: str = "sigmoid"
    init: str = "default"  # default | uniform (U(-init_scale, init_scale), DLG's choice)
    init_scale: float = 0.5
    width: int | None = None  # None: the architecture's own default; models without a width reject it


@dataclass
class FLConfig:
    num_clients: int = 8
    rounds: int = 3
    clients_per_round: int = 2
    strategy: str = "fedavg"
    strategy_args: dict = field(default_factory=dict)
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    evaluate_every: int = 1
    timeout: float = 600.0


@dataclass
class ClientConfig:
    local_epochs: int = 1
    local_steps: int = 2  # 0: run whole local epochs instead of a fixed number of steps
    batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.0
    optimizer: str = "sgd"  # sgd | adam: the clients' local optimizer (torch.optim semantics)
    weight_decay: float = 0.0
    nesterov: bool = False  # Nesterov momentum (sgd, with momentum > 0)
    proximal_mu: float = 0.0  # FedProx's proximal term (mu/2)||w - w_global||^2 (fl.strategy=fedprox sends its own)
    defenses: list[str] = field(default_factory=list)


@dataclass
class AuditConfig:
    attacks: list[str] = field(default_factory=lambda: ["idlg", "dlg", "invgrad"])
    every: int = 1
    max_clients: int = 0  # 0: every sampled client
    gpus_per_job: float = 0.0
    max_concurrent: int = 2
    labels: str = "auto"
    adaptive: str = "off"  # off | on | both: defense-aware variants of attacks that support it
    success_ssim: float = 0.5
    success_margin: float = 0.5  # dB: a row leaks only when its PSNR beats the flat-image baseline by more
    lpips_weights: str | None = None  # folder with LPIPS's weights (None: torch hub cache, lpips package)
    lpips_download: bool = False  # let torchvision download LPIPS's AlexNet backbone (needs internet)
    save_images: bool = True
    threads_per_job: int = 1
    tf32: bool = False  # let attack jobs on a GPU use TF32 matmuls and convolutions
    job_timeout: float = 1800.0  # seconds one attack job may run before it is stopped and recorded failed (0: none)
    calibrate: bool = False  # tune each attack on simulated updates of the server's own data first
    calibration_budget: int = 12  # candidate settings calibration tries (the configured parameters first)
    calibration_cases: int = 2  # simulated client updates per calibration
    calibration_images: int = 8  # images those updates hold at least (more updates for smaller clients)
    calibration_iteration_factor: int = 4  # calibration may double an attack's iterations up to this factor
    calibration_restart_factor: int = 4  # then its restarts, up to this factor
    calibration_samples: int = 256  # images of the server's own data (the test split) calibration draws from
    calibration_data: str | None = None  # a dataset (as data.name) whose test split the server holds; None: the run's
    calibration_root: str | None = None  # where calibration_data's files are (as data.root); None: data.root


@dataclass
class VictimConfig:
    indices: list[int] | None = None
    client: int = 0


@dataclass
class ServerConfig:
    mode: str = "honest"  # honest | malicious


@dataclass
class RayConfig:
    address: str | None = None
    num_cpus: int | None = None  # local instance: CPUs offered to clients (None: all cores)


@dataclass
class SweepConfig:
    key: str | None = None  # any config key, e.g. client.local_epochs (or defense + param below)
    defense: str | None = None
    param: str | None = None  # defaults to the defense's main parameter
    values: list = field(default_factory=list)
    seeds: list = field(default_factory=list)  # each value runs once per seed ([]: the config's seed)
    parallel: int = 1


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "partition": PartitionConfig,
    "model": ModelConfig,
    "fl": FLConfig,
    "client": ClientConfig,
    "audit": AuditConfig,
    "victim": VictimConfig,
    "server": ServerConfig,
    "ray": RayConfig,
    "sweep": SweepConfig,
}


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    attack_params: dict = field(default_factory=dict)  # attack name -> params dataclass
    defense_params: dict = field(default_factory=dict)  # defense name -> params dataclass

    # -- access ---------------------------------------------------------------
    def attack(self, name: str) -> Any:
        """Parameters of a configured attack (its defaults unless the config sets them)."""
        if name not in self.attack_params:
            raise ConfigError("audit.attacks", f"'{name}' is not a configured attack; configured: "
                                               f"{', '.join(self.attack_params) or '(none)'}")
        return self.attack_params[name]

    def defense(self, name: str) -> Any:
        """Parameters of a configured defense (its defaults unless the config sets them)."""
        if name not in self.defense_params:
            raise ConfigError("client.defenses", f"'{name}' is not a configured defense; configured: "
                                                 f"{', '.join(self.defense_params) or '(none)'}")
        return self.defense_params[name]

    # -- serialization ----------------------------------------------------------
    def audit_off(self) -> str:
        """Why the run trains without an audit ("audit.every=0", "audit.attacks=[]"), or "" where it audits."""
        return "audit.every=0" if not self.audit.every else "" if self.audit.attacks else "audit.attacks=[]"

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"seed": self.seed}
        for name in SECTIONS:
            out[name] = asdict(getattr(self, name))
        for name, p in sorted({**self.attack_params, **self.defense_params}.items()):
            out[name] = asdict(p)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def copy(self) -> "Config":
        return copy.deepcopy(self)
