"""The `harness train` command: one run of one backbone and strategy, written to a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from harness.cli.options import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    DEFAULT_STRATEGY,
    DEFAULT_TRAIN,
    BackboneOptionsOption,
    BatchSizeOption,
    BetaOption,
    ClipGradNormOption,
    DatasetOption,
    DeviceOption,
    DimOption,
    EvalBatchSizeOption,
    EvalEveryOption,
    FormatOption,
    ItemColOption,
    KCoreOption,
    KeepAccidentalHitsOption,
    KeepHistoryOption,
    LossOption,
    LrOption,
    MaxLenOption,
    MaxStepsOption,
    MinRatingOption,
    NegativesOption,
    NoLogqOption,
    NoProgressOption,
    NumInterestsOption,
    NumNegativesOption,
    OutputOption,
    PatienceOption,
    RatingColOption,
    RoutingRegOption,
    SplitOption,
    SplitSeedOption,
    StrategyOptionsOption,
    SyntheticSeedOption,
    ThreadsOption,
    TimeColOption,
    TrainingFlags,
    UserColOption,
    ValidUsersOption,
    WeightDecayOption,
    parse_key_values,
)

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.train import RunSummary

STUDY_NAME = "train"


def train(
    ctx: typer.Context,
    dataset: DatasetOption = DEFAULT_DATA.source,
    backbone: Annotated[
        str, typer.Option("--backbone", help="Backbone name (see `harness list`).")
    ] = DEFAULT_MODEL.backbone,
    strategy: Annotated[
        str, typer.Option("--strategy", help="Selection strategy name (see `harness list`).")
    ] = DEFAULT_STRATEGY.name,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Run seed: initialisation, batches, negatives, strategy draws."
        ),
    ] = 0,
    format: FormatOption = DEFAULT_DATA.format,
    user_col: UserColOption = DEFAULT_DATA.user_col,
    item_col: ItemColOption = DEFAULT_DATA.item_col,
    time_col: TimeColOption = DEFAULT_DATA.time_col,
    rating_col: RatingColOption = DEFAULT_DATA.rating_col,
    min_rating: MinRatingOption = DEFAULT_DATA.min_rating,
    k_core: KCoreOption = DEFAULT_DATA.k_core,
    split: SplitOption = DEFAULT_DATA.split,
    split_seed: SplitSeedOption = DEFAULT_DATA.split_seed,
    synthetic_seed: SyntheticSeedOption = DEFAULT_DATA.synthetic_seed,
    dim: DimOption = DEFAULT_MODEL.dim,
    num_interests: NumInterestsOption = DEFAULT_MODEL.num_interests,
    max_len: MaxLenOption = DEFAULT_MODEL.max_len,
    backbone_option: BackboneOptionsOption = None,
    strategy_option: StrategyOptionsOption = None,
    lr: LrOption = DEFAULT_TRAIN.lr,
    weight_decay: WeightDecayOption = DEFAULT_TRAIN.weight_decay,
    batch_size: BatchSizeOption = DEFAULT_TRAIN.batch_size,
    loss: LossOption = DEFAULT_TRAIN.loss,
    num_negatives: NumNegativesOption = DEFAULT_TRAIN.num_negatives,
    negatives: NegativesOption = DEFAULT_TRAIN.negatives,
    no_logq: NoLogqOption = False,
    keep_accidental_hits: KeepAccidentalHitsOption = False,
    beta: BetaOption = DEFAULT_TRAIN.hard_negative_beta,
    routing_reg: RoutingRegOption = DEFAULT_TRAIN.routing_reg,
    max_steps: MaxStepsOption = DEFAULT_TRAIN.max_steps,
    eval_every: EvalEveryOption = DEFAULT_TRAIN.eval_every,
    patience: PatienceOption = DEFAULT_TRAIN.patience,
    valid_users: ValidUsersOption = DEFAULT_TRAIN.valid_users,
    keep_history: KeepHistoryOption = False,
    eval_batch_size: EvalBatchSizeOption = DEFAULT_TRAIN.eval_batch_size,
    clip_grad_norm: ClipGradNormOption = DEFAULT_TRAIN.clip_grad_norm,
    device: DeviceOption = DEFAULT_TRAIN.device,
    threads: ThreadsOption = DEFAULT_TRAIN.threads,
    output: OutputOption = Path("results"),
    no_progress: NoProgressOption = False,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Re-run the run recorded in this config.json (of any run folder). "
            "Every setting comes from the file; only --output, --device, --threads "
            "and --no-progress apply.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Train again even if this run already finished in --output."),
    ] = False,
) -> None:
    """Train one backbone with one selection strategy and write <output>/train/runs/<run_id>/."""
    from harness import runs
    from harness.runs import run_dir
    from harness.train import train_run

    if config_file is not None:
        config = recorded_config(config_file, device=device, threads=threads)
    else:
        flags = TrainingFlags.from_params(ctx.params)
        config = flags.run_config(
            backbone=backbone,
            strategy=strategy,
            seed=seed,
            backbone_options=parse_key_values(backbone_option, "--backbone-option"),
            strategy_options=parse_key_values(strategy_option, "--strategy-option"),
        )
    directory = run_dir(output, STUDY_NAME, config.run_id)
    if runs.is_finished(directory) and not force:
        # Runs are deterministic, so training again would only rewrite the same numbers.
        metrics = runs.read_metrics(directory) or {}
        lines = [f"run {config.run_id} already finished; pass --force to train it again"]
        lines.append(_metric_line("valid", metrics.get("valid") or {}))
        if metrics.get("test"):
            lines.append(_metric_line("test", metrics["test"]))
        lines.append(f"files: {directory}")
        typer.echo("\n".join(lines))
        return
    summary = train_run(config, directory, progress=not no_progress)
    typer.echo(format_summary(summary))


def recorded_config(path: Path, *, device: str, threads: int | None) -> RunConfig:
    """Read the RunConfig of a run folder's ``config.json``, with this machine's device and threads.

    Device and threads do not change a run's numbers (they are left out of
    the run id), so a run recorded on another machine reproduces here.

    Raises:
        ConfigError: The file is missing, is not JSON or contains no run config.
    """
    import dataclasses
    import json

    from harness.config import RunConfig
    from harness.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass the config.json of a run folder")
    try:
        payload = json.loads(path.read_text())
        recorded = RunConfig.from_dict(payload["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"invalid run config {path}: {exc}; pass the config.json file of a run folder"
        ) from None
    train = dataclasses.replace(recorded.train, device=device, threads=threads)
    return dataclasses.replace(recorded, train=train)


def format_summary(summary: RunSummary) -> str:
    """Render the lines printed after a run: metrics at the best step and where the files are."""
    lines = [
        f"run {summary.run_id}: {summary.method} on {summary.dataset}",
        f"best step {summary.best_step} of {summary.steps} (stopped: {summary.stopped}), "
        f"{summary.train_seconds:.1f} s training, {summary.eval_seconds:.1f} s evaluation",
        _metric_line("valid", summary.valid),
    ]
    if summary.test is not None:
        lines.append(_metric_line("test", summary.test))
    lines.append(f"files: {summary.run_dir}")
    return "\n".join(lines)


def _metric_line(label: str, metrics: dict[str, float]) -> str:
    recall = metrics.get("recall@20", float("nan"))
    ndcg = metrics.get("ndcg@20", float("nan"))
    return f"{label:<5} recall@20 {recall:.4f}  ndcg@20 {ndcg:.4f}"


def register(app: typer.Typer) -> None:
    """Add the `train` command to the app."""
    app.command(name="train")(train)
