"""Frozen, validated configuration objects shared by the CLI, training and studies.

Each dataclass validates itself on construction, so an invalid value fails
before any work starts. A :class:`RunConfig` resolves to a deterministic
run id: the hash of its JSON form, which is what a study uses to skip runs
that already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from harness.errors import ConfigError, unknown_choice

SplitName = Literal["loo", "user"]
NegativeSampling = Literal["uniform", "popularity", "log-uniform"]
LossName = Literal["sampled", "full"]
DeviceName = Literal["auto", "cpu", "cuda"]


def check_choice(kind: str, value: object, literal: Any) -> None:
    """Raise a ConfigError unless ``value`` is one of the values of a ``Literal`` type."""
    valid = get_args(literal)
    if value not in valid:
        raise unknown_choice(kind, value, [str(v) for v in valid])


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"invalid {name}={value!r}: must be {bound}")


@dataclass(frozen=True)
class DataConfig:
    """Source, preparation and split of the interactions.

    Attributes:
        source: A file path, or ``"synthetic"`` for the embedded planted-interest data.
        format: Reader name (see ``harness list``); ``None`` detects it from the file.
        user_col, item_col, time_col, rating_col: Column names for the generic
            CSV/TSV/Parquet reader.
        min_rating: Keep only interactions rated at least this much (``None``: keep all).
        k_core: Iteratively drop users and items with fewer interactions (0: off).
        split: ``"loo"`` (leave-one-out, the BaM protocol) or ``"user"``
            (80/10/10 users, the ComiRec/REMI protocol).
        split_seed: Seed of the user split (ignored by leave-one-out).
        synthetic_seed: Seed of the synthetic generator when ``source == "synthetic"``.
    """

    source: str = "synthetic"
    format: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    min_rating: float | None = None
    k_core: int = 0
    split: SplitName = "loo"
    split_seed: int = 0
    synthetic_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("split", self.split, SplitName)
        _check_positive("k_core", self.k_core, allow_zero=True)

    @property
    def name(self) -> str:
        """Short data set name for tables: the file stem, or ``synthetic``."""
        if self.source == "synthetic":
            return "synthetic"
        from pathlib import Path

        path = Path(self.source)
        stem = path.stem
        # Generic file names ("train", "ratings") are ambiguous, so the folder name is prefixed.
        if stem.lower() in {"train", "ratings", "data", "u", "interactions"}:
            return f"{path.parent.name}-{stem}"
        return stem


@dataclass(frozen=True)
class ModelConfig:
    """Backbone choice and the sizes every backbone shares.

    Attributes:
        backbone: Registered backbone name (``backbones.REGISTRY``).
        dim: Embedding size D.
        num_interests: Number of interests K (SASRec always uses 1).
        max_len: History length L fed to the backbone.
        options: Backbone-specific options, passed to its config dataclass.
    """

    backbone: str = "comirec-sa"
    dim: int = 64
    num_interests: int = 4
    max_len: int = 50
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_interests < 1:
            raise ConfigError(f"invalid num_interests={self.num_interests}: K must be >= 1")
        _check_positive("dim", self.dim)
        _check_positive("max_len", self.max_len)


@dataclass(frozen=True)
class StrategyConfig:
    """Selection strategy choice.

    Attributes:
        name: Registered strategy name (``strategies.REGISTRY``).
        options: Strategy-specific options (tau, schedule, p, ...), passed to
            its config dataclass.
    """

    name: str = "bam"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, loss, validation and evaluation settings.

    Defaults follow the BaM protocol: Adam at lr 1e-3, batch 128, 1,280
    shared uniform negatives with log-Q correction, early stopping on
    validation Recall@20.

    Attributes:
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: Training examples per step.
        loss: ``"sampled"`` softmax over shared negatives or ``"full"`` softmax.
        num_negatives: Shared negatives per step for the sampled loss.
        negatives: Negative distribution: uniform, item popularity or log-uniform by popularity rank.
        logq: Subtract log Q(i) from sampled logits (log-Q correction).
        remove_accidental_hits: Mask negatives equal to a row's target.
        hard_negative_beta: REMI's interest-aware hard-negative weight beta (0: off).
        routing_reg: Weight lambda of REMI's routing regularization, for any
            backbone that exposes its attention (0: off; REMI's own weight is a
            backbone option).
        max_steps: Maximum training steps.
        eval_every: Validate every this many steps.
        patience: Stop after this many validations without improvement.
        valid_users: Fixed validation subsample size, drawn once from the seed (``None``: all).
        exclude_history: Exclude history items from the ranking (score ``-inf``).
        eval_batch_size: Users per evaluation batch.
        device: ``auto`` picks CUDA when present.
        threads: Torch intra-op threads (``None``: leave torch's default).
        clip_grad_norm: Clip the gradient norm to this value (``None``: off).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    loss: LossName = "sampled"
    num_negatives: int = 1280
    negatives: NegativeSampling = "uniform"
    logq: bool = True
    remove_accidental_hits: bool = True
    hard_negative_beta: float = 0.0
    routing_reg: float = 0.0
    max_steps: int = 20_000
    eval_every: int = 500
    patience: int = 5
    valid_users: int | None = None
    exclude_history: bool = True
    eval_batch_size: int = 512
    device: DeviceName = "auto"
    threads: int | None = None
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LossName)
        check_choice("negative sampling", self.negatives, NegativeSampling)
        check_choice("device", self.device, DeviceName)
        _check_positive("lr", self.lr)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("num_negatives", self.num_negatives)
        _check_positive("hard_negative_beta", self.hard_negative_beta, allow_zero=True)
        _check_positive("routing_reg", self.routing_reg, allow_zero=True)
        _check_positive("max_steps", self.max_steps)
        _check_positive("eval_every", self.eval_every)
        _check_positive("patience", self.patience)
        _check_positive("eval_batch_size", self.eval_batch_size)
        if self.valid_users is not None:
            _check_positive("valid_users", self.valid_users)
        if self.threads is not None:
            _check_positive("threads", self.threads)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers.

    Two equal RunConfigs produce the same metrics, so the run id is a hash of
    this object. Settings that do not change the numbers (device, threads,
    output folder, progress bars) are excluded from the hash.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-serialisable data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config written by :meth:`to_dict` (validation runs again)."""
        try:
            return cls(
                data=DataConfig(**data["data"]),
                model=ModelConfig(**data["model"]),
                strategy=StrategyConfig(**data["strategy"]),
                train=TrainConfig(**data["train"]),
                seed=int(data["seed"]),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid run config: {exc}") from exc

    @property
    def method(self) -> str:
        """Method label used in tables: ``backbone+strategy``."""
        return f"{self.model.backbone}+{self.strategy.name}"

    @property
    def run_id(self) -> str:
        """Deterministic 12-hex-digit id from the settings that change the numbers."""
        payload = self.to_dict()
        for key in ("device", "threads", "eval_batch_size"):
            payload["train"].pop(key, None)
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]
