"""The `harness ablation` command: vary one setting of one backbone and strategy over a list of values.

It runs through the study machinery (claims, resume, parallel workers) and
records ``{"ablation": {"factor", "path", "values"}}`` in ``study.json``, from
which `harness report` draws one line plot and table per factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    UserColOption,
    ValidUsersOption,
    WeightDecayOption,
)
from harness.cli.study_cmd import (
    DatasetsOption,
    JobsOption,
    NameOption,
    PresetOption,
    SeedsOption,
    StorageOption,
    TrainFnOption,
    common_inputs,
    default_seeds,
    resolve_train_fn,
    run_and_print,
)
from harness.errors import ConfigError


def parse_values(text: str, factor: str, backbone: str, strategy: str) -> tuple[object, ...]:
    """Parse ``--values`` (comma-separated) into values of the type the factor's setting declares.

    Raises:
        ConfigError: An empty list, or a value that is not of the setting's type.
    """
    from harness.study.overrides import coerce_value, parse_path

    path = parse_path(factor, label="factor")
    pieces = [piece.strip() for piece in text.split(",") if piece.strip()]
    if not pieces:
        raise ConfigError(
            f"invalid --values {text!r}: give at least one value, e.g. --values 0.5,1,2"
        )
    return tuple(coerce_value(path, piece, backbone, strategy) for piece in pieces)


def ablation(
    ctx: typer.Context,
    factor: Annotated[
        str,
        typer.Option(
            "--factor",
            help="Setting to vary, as SECTION.FIELD or SECTION.options.NAME: e.g. strategy.tau, "
            "model.num_interests, train.hard_negative_beta, model.options.reg_lambda.",
        ),
    ],
    values: Annotated[
        str,
        typer.Option("--values", help="Comma-separated values of the factor, e.g. 0.1,0.5,1,2."),
    ],
    dataset: DatasetsOption = None,
    backbone: Annotated[
        str, typer.Option("--backbone", help="Backbone name (see `harness list`).")
    ] = DEFAULT_MODEL.backbone,
    strategy: Annotated[
        str, typer.Option("--strategy", help="Selection strategy name (see `harness list`).")
    ] = DEFAULT_STRATEGY.name,
    seeds: SeedsOption = None,
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
    """Vary one setting of one backbone+strategy over --values, each value over every seed."""
    from harness.cli.options import parse_key_values
    from harness.study import (
        Ablation,
        StudySpec,
        default_study_name,
        expand_backbones,
        expand_strategies,
        parse_seeds,
        run_study,
        scope_options,
    )

    inputs = common_inputs(ctx, dataset, preset)
    backbone_names = expand_backbones(backbone)
    strategy_names = expand_strategies(strategy)
    if len(backbone_names) != 1 or len(strategy_names) != 1:
        raise ConfigError(
            f"invalid ablation of {backbone!r} with {strategy!r}: an ablation varies one backbone "
            "and one strategy; use harness study for several"
        )
    sweep = Ablation(factor, parse_values(values, factor, backbone_names[0], strategy_names[0]))
    spec = StudySpec(
        name=name
        or default_study_name(inputs.datasets, "grid", sweep, backbone_names[0], strategy_names[0]),
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
        preset=preset,
        ablation=sweep,
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
        ),
        value_label=factor,
    )


def register(app: typer.Typer) -> None:
    """Add the `ablation` command to the app."""
    app.command(name="ablation")(ablation)
