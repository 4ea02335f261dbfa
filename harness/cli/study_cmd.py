"""The `harness study` command: a grid or an Optuna tuning study over backbones x strategies x seeds.

The helpers below are shared with `harness ablation`, which runs through the
same study machinery.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harness.cli.options import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    DEFAULT_TRAIN,
    RUN_PANEL,
    BackboneOptionsOption,
    BatchSizeOption,
    BetaOption,
    ClipGradNormOption,
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
)
from harness.errors import ConfigError
from harness.study.presets import PRESETS

if TYPE_CHECKING:
    import pandas as pd

    from harness.config import DataConfig, ModelConfig, TrainConfig
    from harness.study import StudyResult
    from harness.study.presets import Preset

DatasetsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        help="Interaction file, or 'synthetic' for the embedded planted-interest data set; repeat for several data sets.",
        rich_help_panel="Data",
    ),
]
SeedsOption = Annotated[
    str | None,
    typer.Option(
        "--seeds",
        help="A count N (seeds 0..N-1) or a comma list such as 1,5,9 (default: the preset's count, else 3).",
        rich_help_panel=RUN_PANEL,
    ),
]
JobsOption = Annotated[
    int,
    typer.Option(
        "--jobs",
        help="Local worker processes; each run gets max(1, CPUs // jobs) torch threads unless --threads is given.",
        rich_help_panel=RUN_PANEL,
    ),
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage shared by workers: an RDB URL (sqlite:///study.db, postgresql://...) "
        "or a journal file path (default: optuna.journal in the study folder).",
        rich_help_panel=RUN_PANEL,
    ),
]
NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Study name, the folder under --output (default: derived from the data sets and the mode).",
        rich_help_panel=RUN_PANEL,
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Training budget, overridden by explicit training flags: "
        + " or ".join(f"'{preset.name}' ({preset.description})" for preset in PRESETS.values())
        + ".",
        rich_help_panel=RUN_PANEL,
    ),
]
TrainFnOption = Annotated[
    str | None,
    typer.Option(
        "--train-fn",
        hidden=True,
        help="MODULE:FUNCTION replacing harness.train.train_run (for tests of the study machinery).",
    ),
]

# Parameters that are not training flags, or whose value TrainingFlags cannot take as is.
_NOT_TRAINING_FLAGS = {"dataset"}


def explicit_params(ctx: typer.Context) -> frozenset[str]:
    """Names of the parameters the user gave on the command line (or through the environment)."""
    explicit = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        # Typer 0.29 vendors click privately, so the ParameterSource enum is compared by name.
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            explicit.add(name)
    return frozenset(explicit)


def resolve_train_fn(target: str | None) -> Any:
    """Import the function named ``MODULE:FUNCTION``, or return None for the default trainer."""
    if target is None:
        return None
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"invalid --train-fn {target!r}: {exc}; expected MODULE:FUNCTION"
        ) from None


@dataclasses.dataclass(frozen=True)
class CommonInputs:
    """Settings that `harness study` and `harness ablation` build the same way from their flags."""

    datasets: tuple[DataConfig, ...]
    model: ModelConfig
    train: TrainConfig
    preset: Preset | None


def common_inputs(
    ctx: typer.Context, datasets: list[str] | None, preset_name: str | None
) -> CommonInputs:
    """Build the data sets, model sizes and training settings from the shared flags and the preset.

    A preset sets only the training fields the user left at their defaults.
    """
    from harness.study import get_preset

    preset = get_preset(preset_name) if preset_name is not None else None
    params = {key: value for key, value in ctx.params.items() if key not in _NOT_TRAINING_FLAGS}
    flags = TrainingFlags.from_params(params)
    sources = datasets or [DEFAULT_DATA.source]
    data = tuple(dataclasses.replace(flags, dataset=source).data_config() for source in sources)
    train = flags.train_config()
    if preset is not None:
        train = preset.apply(train, explicit=explicit_params(ctx))
    return CommonInputs(data, flags.model_config(DEFAULT_MODEL.backbone), train, preset)


def default_seeds(preset: Preset | None) -> str:
    """Return the ``--seeds`` value used when the flag is omitted."""
    from harness.study.presets import DEFAULT_SEEDS

    return str(preset.seeds if preset is not None else DEFAULT_SEEDS)


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def format_summary(summary: pd.DataFrame, value_label: str | None = None) -> str:
    """Render the end-of-study table: test Recall@20 and nDCG@20 per cell, mean ± std over seeds."""
    import pandas as pd

    if summary.empty:
        return "no runs"
    table = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "method": summary["method"],
            **({value_label: summary["value"]} if value_label else {}),
            "runs": summary["runs"],
            "failed": summary["failed"],
            "test recall@20": [
                _mean_std(m, s)
                for m, s in zip(summary["recall@20_mean"], summary["recall@20_std"], strict=True)
            ],
            "test ndcg@20": [
                _mean_std(m, s)
                for m, s in zip(summary["ndcg@20_mean"], summary["ndcg@20_std"], strict=True)
            ],
        }
    )
    return table.to_string(index=False)


def count_failed(result: StudyResult) -> int:
    """Count the study's runs whose folder records a failure."""
    if not len(result.runs):
        return 0
    return int((result.runs["status"] == "failed").sum())


def print_result(result: StudyResult, value_label: str | None = None) -> None:
    """Print the summary table, failed runs and where the report goes."""
    from harness.study.text import count_noun

    counts: Mapping[str, int] = (
        result.runs["status"].value_counts().to_dict() if len(result.runs) else {}
    )
    failed = count_failed(result)
    typer.echo(format_summary(result.summary, value_label))
    typer.echo(
        f"{counts.get('finished', 0)} of {count_noun(len(result.cells), 'run')} finished"
        + (f", {failed} failed (see error.json in their run folders)" if failed else "")
    )
    typer.echo(f"report: harness report {result.directory}")


# Each run's training loop logs here. Its lines, failures included, go to the
# run's log.txt, and the study logs its own warning for each failed run.
_RUN_LOGGER = "harness.train"


class StudyConsoleFilter(logging.Filter):
    """Console filter during a study: the study's own INFO lines, and warnings and errors of other code.

    Records of the training loop (``harness.train``) are left out at every
    level. They go to each run's ``log.txt``, and the study logs one warning
    with the run id and the error for each failed run, so a failure shows
    once on the console. Worker processes (``--jobs`` above 1) never print
    these records either, so the console reads the same for any job count.
    Other INFO lines of each run (every validation of every run) are left out
    because they would bury the progress bar.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _RUN_LOGGER:
            return False
        return record.levelno >= logging.WARNING or record.name.startswith("harness.study")


def run_and_print(run: Any, value_label: str | None = None) -> None:
    """Call ``run()`` with log lines routed around the progress bars, then print its result.

    Exits with status 1 after printing when any run of the study failed. On
    Ctrl-C or SIGTERM it prints how far the study got and exits with 128 plus
    the signal number (130 or 143).
    """
    import optuna
    from tqdm.contrib.logging import logging_redirect_tqdm

    from harness.study.interrupt import StudyInterrupted, sigterm_as_interrupt

    # Optuna resets its logger to INFO when it is first imported. Its per-trial
    # lines would repeat what the progress bar shows.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console_filter = StudyConsoleFilter()
    with sigterm_as_interrupt() as stop, logging_redirect_tqdm():
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(console_filter)
        try:
            result = run()
        except StudyInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(stop.exit_status) from None
        except KeyboardInterrupt:
            # Stopped during the checks, or a second interrupt during the cleanup.
            typer.echo("interrupted; run the same command to resume", err=True)
            raise typer.Exit(stop.exit_status) from None
        finally:
            for handler in handlers:
                handler.removeFilter(console_filter)
    print_result(result, value_label)
    if count_failed(result):
        raise typer.Exit(1)


def study(
    ctx: typer.Context,
    dataset: DatasetsOption = None,
    backbones: Annotated[
        str,
        typer.Option(
            "--backbones",
            help="Comma list of backbones; 'all' is the four multi-interest ones (sasrec by name).",
        ),
    ] = "all",
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            help="Comma list of strategies; 'all' is argmax, bam, gumbel, annealed (uniform, label-aware by name).",
        ),
    ] = "all",
    seeds: SeedsOption = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="'grid' runs every cell as given; 'tune' tunes each backbone+strategy with Optuna "
            "on validation Recall@20 at the first seed, then runs the best settings over all seeds.",
        ),
    ] = "grid",
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            help="Tuning trials per backbone+strategy and data set (default: the preset's, else 20).",
        ),
    ] = None,
    tune_seed: Annotated[
        int, typer.Option("--tune-seed", help="Seed of the Optuna TPE samplers.")
    ] = 0,
    jobs: JobsOption = 1,
    storage: StorageOption = None,
    name: NameOption = None,
    preset: PresetOption = None,
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
    train_fn: TrainFnOption = None,
) -> None:
    """Run backbones x strategies x seeds (x data sets) and write <output>/<name>/."""
    from harness.cli.options import parse_key_values
    from harness.study import (
        StudySpec,
        default_study_name,
        expand_backbones,
        expand_strategies,
        parse_seeds,
        run_study,
        scope_options,
    )
    from harness.study.presets import DEFAULT_TRIALS

    inputs = common_inputs(ctx, dataset, preset)
    backbone_names = expand_backbones(backbones)
    strategy_names = expand_strategies(strategies)
    spec = StudySpec(
        name=name or default_study_name(inputs.datasets, mode),  # type: ignore[arg-type]
        datasets=inputs.datasets,
        backbones=backbone_names,
        strategies=strategy_names,
        seeds=parse_seeds(seeds if seeds is not None else default_seeds(inputs.preset)),
        model=inputs.model,
        train=inputs.train,
        backbone_options=scope_options(
            parse_key_values(backbone_option, "--backbone-option"), backbone_names, "backbone"
        ),
        strategy_options=scope_options(
            parse_key_values(strategy_option, "--strategy-option"), strategy_names, "strategy"
        ),
        mode=mode,  # type: ignore[arg-type]
        trials=trials
        if trials is not None
        else (inputs.preset.trials if inputs.preset else DEFAULT_TRIALS),
        preset=preset,
        tune_seed=tune_seed,
    )
    target = resolve_train_fn(train_fn)
    run_and_print(
        lambda: run_study(
            spec,
            output=output,
            storage=storage,
            jobs=jobs,
            train_fn=target,
            progress=not no_progress,
        )
    )


def register(app: typer.Typer) -> None:
    """Add the `study` command to the app."""
    app.command(name="study")(study)
