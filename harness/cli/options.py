"""Training flags shared by ``harness train`` and ``harness study``, and their conversion to configs.

Each flag is an ``Annotated`` type alias, so a command declares it in one
line (``dim: DimOption = DEFAULT_MODEL.dim``) and every command that trains
gets the same name, help text and default. A command collects the parsed
values with :meth:`TrainingFlags.from_params` (from ``typer.Context.params``)
and turns them into config objects with :meth:`TrainingFlags.run_config`.
Defaults come from the config dataclasses, so the CLI and the library agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.config import (
    DataConfig,
    DeviceName,
    LossName,
    ModelConfig,
    NegativeSampling,
    RunConfig,
    SplitName,
    StrategyConfig,
    TrainConfig,
)
from harness.errors import ConfigError, DataError

DEFAULT_DATA = DataConfig()
DEFAULT_MODEL = ModelConfig()
DEFAULT_STRATEGY = StrategyConfig()
DEFAULT_TRAIN = TrainConfig()

DATA_PANEL = "Data"
MODEL_PANEL = "Model"
TRAIN_PANEL = "Training"
RUN_PANEL = "Run"

DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="Interaction file to read, or 'synthetic' for the embedded planted-interest data set.",
        rich_help_panel=DATA_PANEL,
    ),
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="Reader name (see `harness list`). Detected from the file when omitted.",
        rich_help_panel=DATA_PANEL,
    ),
]
UserColOption = Annotated[
    str | None,
    typer.Option(
        "--user-col",
        help="User column of a generic CSV/TSV/Parquet file.",
        rich_help_panel=DATA_PANEL,
    ),
]
ItemColOption = Annotated[
    str | None,
    typer.Option(
        "--item-col",
        help="Item column of a generic CSV/TSV/Parquet file.",
        rich_help_panel=DATA_PANEL,
    ),
]
TimeColOption = Annotated[
    str | None,
    typer.Option(
        "--time-col",
        help="Timestamp column of a generic CSV/TSV/Parquet file.",
        rich_help_panel=DATA_PANEL,
    ),
]
RatingColOption = Annotated[
    str | None,
    typer.Option(
        "--rating-col",
        help="Rating column of a generic CSV/TSV/Parquet file.",
        rich_help_panel=DATA_PANEL,
    ),
]
MinRatingOption = Annotated[
    float | None,
    typer.Option(
        "--min-rating",
        help="Keep only interactions rated at least this much (default: keep all).",
        rich_help_panel=DATA_PANEL,
    ),
]
KCoreOption = Annotated[
    int,
    typer.Option(
        "--k-core",
        help="Drop users and items with fewer interactions, repeatedly (0: off).",
        rich_help_panel=DATA_PANEL,
    ),
]
SplitOption = Annotated[
    SplitName,
    typer.Option(
        "--split",
        help="'loo': leave-one-out (BaM); 'user': 80/10/10 users (ComiRec, REMI).",
        rich_help_panel=DATA_PANEL,
    ),
]
SplitSeedOption = Annotated[
    int,
    typer.Option(
        "--split-seed",
        help="Seed of the user split (leave-one-out ignores it).",
        rich_help_panel=DATA_PANEL,
    ),
]
SyntheticSeedOption = Annotated[
    int,
    typer.Option(
        "--synthetic-seed", help="Seed of the synthetic data generator.", rich_help_panel=DATA_PANEL
    ),
]

DimOption = Annotated[
    int, typer.Option("--dim", help="Embedding size D.", rich_help_panel=MODEL_PANEL)
]
NumInterestsOption = Annotated[
    int,
    typer.Option(
        "--num-interests",
        help="Number of interests K (SASRec always uses 1).",
        rich_help_panel=MODEL_PANEL,
    ),
]
MaxLenOption = Annotated[
    int, typer.Option("--max-len", help="History length L in items.", rich_help_panel=MODEL_PANEL)
]
BackboneOptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--backbone-option",
        help="Backbone option KEY=VALUE, repeatable; VALUE is read as a JSON literal when it is one, else as a string.",
        rich_help_panel=MODEL_PANEL,
    ),
]
StrategyOptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--strategy-option",
        help="Strategy option KEY=VALUE (e.g. tau=0.5), repeatable; VALUE is read as a JSON literal when it is one, else as a string.",
        rich_help_panel=MODEL_PANEL,
    ),
]

LrOption = Annotated[
    float, typer.Option("--lr", help="Adam learning rate.", rich_help_panel=TRAIN_PANEL)
]
WeightDecayOption = Annotated[
    float, typer.Option("--weight-decay", help="Adam weight decay.", rich_help_panel=TRAIN_PANEL)
]
BatchSizeOption = Annotated[
    int,
    typer.Option("--batch-size", help="Training examples per step.", rich_help_panel=TRAIN_PANEL),
]
LossOption = Annotated[
    LossName,
    typer.Option(
        "--loss",
        help="Sampled softmax over shared negatives, or full softmax.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
NumNegativesOption = Annotated[
    int,
    typer.Option(
        "--num-negatives",
        help="Shared negatives per step (sampled loss).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
NegativesOption = Annotated[
    NegativeSampling,
    typer.Option(
        "--negatives",
        help="Negative distribution over items (sampled loss).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
NoLogqOption = Annotated[
    bool,
    typer.Option(
        "--no-logq",
        help="Turn off the log-Q correction of sampled logits.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
KeepAccidentalHitsOption = Annotated[
    bool,
    typer.Option(
        "--keep-accidental-hits",
        help="Keep negatives that equal a row's target (removed by default).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
BetaOption = Annotated[
    float,
    typer.Option(
        "--beta",
        help="REMI's interest-aware hard-negative weight beta (0: off).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
RoutingRegOption = Annotated[
    float,
    typer.Option(
        "--routing-reg",
        help="Weight lambda of REMI's routing regularization for any backbone with attention (0: off).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
MaxStepsOption = Annotated[
    int, typer.Option("--max-steps", help="Maximum training steps.", rich_help_panel=TRAIN_PANEL)
]
EvalEveryOption = Annotated[
    int,
    typer.Option(
        "--eval-every", help="Validate every this many steps.", rich_help_panel=TRAIN_PANEL
    ),
]
PatienceOption = Annotated[
    int,
    typer.Option(
        "--patience",
        help="Stop after this many validations without improvement.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
ValidUsersOption = Annotated[
    int | None,
    typer.Option(
        "--valid-users",
        help="Validate on a fixed subsample of this many users, drawn once from the seed (default: all).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
KeepHistoryOption = Annotated[
    bool,
    typer.Option(
        "--keep-history",
        help="Keep history items in the ranking (excluded by default).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
EvalBatchSizeOption = Annotated[
    int,
    typer.Option(
        "--eval-batch-size", help="Users per evaluation batch.", rich_help_panel=TRAIN_PANEL
    ),
]
ClipGradNormOption = Annotated[
    float | None,
    typer.Option(
        "--clip-grad-norm",
        help="Clip the gradient norm to this value (default: off).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
DeviceOption = Annotated[
    DeviceName,
    typer.Option("--device", help="'auto' uses CUDA when available.", rich_help_panel=TRAIN_PANEL),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="Torch intra-op threads (default: torch's choice).",
        rich_help_panel=TRAIN_PANEL,
    ),
]

OutputOption = Annotated[
    Path, typer.Option("--output", help="Output root folder.", rich_help_panel=RUN_PANEL)
]
NoProgressOption = Annotated[
    bool, typer.Option("--no-progress", help="Hide the progress bar.", rich_help_panel=RUN_PANEL)
]


def parse_key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` flag values into a dict.

    A value is read with :func:`json.loads` when it is a JSON literal
    (``0.5``, ``true``, ``null``, ``[1, 2]``, ``"text"``) and kept as the
    raw string otherwise (``cosine``). Nothing is evaluated as code.

    Args:
        pairs: The flag values in the order given.
        flag: The flag name for error messages, e.g. ``"--strategy-option"``.

    Returns:
        Option values by key.

    Raises:
        ConfigError: A value has no ``=``, an empty key, or a key given twice.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, separator, raw = pair.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"invalid {flag} {pair!r}: expected KEY=VALUE, e.g. {flag} tau=0.5")
        if key in options:
            raise ConfigError(
                f"invalid {flag} {pair!r}: option {key!r} is given twice; give each key once"
            )
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@dataclass(frozen=True)
class TrainingFlags:
    """Parsed values of the shared training flags, named as the command parameters.

    The backbone, strategy and seed are not part of it, because ``harness
    study`` takes lists of them. ``no_logq``, ``keep_accidental_hits`` and
    ``keep_history`` are the negations of the TrainConfig fields, because
    the flags turn defaults off.
    """

    dataset: str = DEFAULT_DATA.source
    format: str | None = DEFAULT_DATA.format
    user_col: str | None = DEFAULT_DATA.user_col
    item_col: str | None = DEFAULT_DATA.item_col
    time_col: str | None = DEFAULT_DATA.time_col
    rating_col: str | None = DEFAULT_DATA.rating_col
    min_rating: float | None = DEFAULT_DATA.min_rating
    k_core: int = DEFAULT_DATA.k_core
    split: str = DEFAULT_DATA.split
    split_seed: int = DEFAULT_DATA.split_seed
    synthetic_seed: int = DEFAULT_DATA.synthetic_seed
    dim: int = DEFAULT_MODEL.dim
    num_interests: int = DEFAULT_MODEL.num_interests
    max_len: int = DEFAULT_MODEL.max_len
    lr: float = DEFAULT_TRAIN.lr
    weight_decay: float = DEFAULT_TRAIN.weight_decay
    batch_size: int = DEFAULT_TRAIN.batch_size
    loss: str = DEFAULT_TRAIN.loss
    num_negatives: int = DEFAULT_TRAIN.num_negatives
    negatives: str = DEFAULT_TRAIN.negatives
    no_logq: bool = not DEFAULT_TRAIN.logq
    keep_accidental_hits: bool = not DEFAULT_TRAIN.remove_accidental_hits
    beta: float = DEFAULT_TRAIN.hard_negative_beta
    routing_reg: float = DEFAULT_TRAIN.routing_reg
    max_steps: int = DEFAULT_TRAIN.max_steps
    eval_every: int = DEFAULT_TRAIN.eval_every
    patience: int = DEFAULT_TRAIN.patience
    valid_users: int | None = DEFAULT_TRAIN.valid_users
    keep_history: bool = not DEFAULT_TRAIN.exclude_history
    eval_batch_size: int = DEFAULT_TRAIN.eval_batch_size
    clip_grad_norm: float | None = DEFAULT_TRAIN.clip_grad_norm
    device: str = DEFAULT_TRAIN.device
    threads: int | None = DEFAULT_TRAIN.threads

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainingFlags:
        """Pick the training flags out of a command's parsed parameters (others are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in params.items() if name in names})

    def data_config(self) -> DataConfig:
        """Build the DataConfig. A missing data file fails here, before anything is loaded."""
        if self.dataset != "synthetic" and not Path(self.dataset).exists():
            raise DataError(
                f"data file not found: {self.dataset}; pass an existing file or 'synthetic'"
            )
        return DataConfig(
            source=self.dataset,
            format=self.format,
            user_col=self.user_col,
            item_col=self.item_col,
            time_col=self.time_col,
            rating_col=self.rating_col,
            min_rating=self.min_rating,
            k_core=self.k_core,
            split=self.split,  # type: ignore[arg-type]
            split_seed=self.split_seed,
            synthetic_seed=self.synthetic_seed,
        )

    def model_config(self, backbone: str, options: Mapping[str, Any] | None = None) -> ModelConfig:
        """Build the ModelConfig for ``backbone`` with backbone-specific ``options``."""
        return ModelConfig(
            backbone=backbone,
            dim=self.dim,
            num_interests=self.num_interests,
            max_len=self.max_len,
            options=dict(options or {}),
        )

    def train_config(self) -> TrainConfig:
        """Build the TrainConfig."""
        return TrainConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            loss=self.loss,  # type: ignore[arg-type]
            num_negatives=self.num_negatives,
            negatives=self.negatives,  # type: ignore[arg-type]
            logq=not self.no_logq,
            remove_accidental_hits=not self.keep_accidental_hits,
            hard_negative_beta=self.beta,
            routing_reg=self.routing_reg,
            max_steps=self.max_steps,
            eval_every=self.eval_every,
            patience=self.patience,
            valid_users=self.valid_users,
            exclude_history=not self.keep_history,
            eval_batch_size=self.eval_batch_size,
            device=self.device,  # type: ignore[arg-type]
            threads=self.threads,
            clip_grad_norm=self.clip_grad_norm,
        )

    def run_config(
        self,
        *,
        backbone: str,
        strategy: str,
        seed: int,
        backbone_options: Mapping[str, Any] | None = None,
        strategy_options: Mapping[str, Any] | None = None,
    ) -> RunConfig:
        """Build the full RunConfig of one run.

        Backbone and strategy names are checked against their registries
        here, so a typo fails before any data is read.
        """
        import backbones
        import strategies
        from harness.registry import lookup

        lookup(backbones.REGISTRY, backbone, "backbone")
        lookup(strategies.REGISTRY, strategy, "strategy")
        return RunConfig(
            data=self.data_config(),
            model=self.model_config(backbone, backbone_options),
            strategy=StrategyConfig(name=strategy, options=dict(strategy_options or {})),
            train=self.train_config(),
            seed=seed,
        )
