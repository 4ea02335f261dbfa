"""What a study runs: its specification, the cells it expands to, and ``study.json``.

A cell is one run: a data set, a backbone, a strategy and a seed (and, in an
ablation, one value of the varied setting). Its :class:`RunConfig` gives the
run id, so a cell that finished in an earlier invocation is recognised by
its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from harness import runs
from harness.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
    check_choice,
)
from harness.errors import ConfigError
from harness.registry import expand_names, lookup
from harness.study.overrides import ConfigPath, apply_values, check_option, parse_path, with_value

logger = logging.getLogger(__name__)

StudyMode = Literal["grid", "tune"]

STUDY_FILE = "study.json"
RUNS_FOLDER = "runs"

# Train settings that never change a run's numbers; RunConfig.run_id leaves them out too.
_NON_RESULT_TRAIN_FIELDS = ("device", "threads", "eval_batch_size")

# A study name becomes a folder name and part of Optuna study names.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def parse_seeds(text: str) -> tuple[int, ...]:
    """Parse ``--seeds``: a count ``N`` means seeds ``0..N-1``, a comma list names the seeds.

    ``3`` gives ``(0, 1, 2)``; ``1,5,9`` gives ``(1, 5, 9)``; ``7,`` gives ``(7,)``.

    Raises:
        ConfigError: If the text is not a positive count or a list of distinct
            non-negative integers.
    """
    text = text.strip()
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise ConfigError(
                f"invalid --seeds {text!r}: expected a count (3 means seeds 0,1,2) or a list such as 1,5,9"
            ) from None
        if count < 1:
            raise ConfigError(f"invalid --seeds {text!r}: a study needs at least one seed")
        return tuple(range(count))

    seeds: list[int] = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            raise ConfigError(
                f"invalid seed {part!r} in --seeds {text!r}: seeds are integers"
            ) from None
        if seed < 0:
            raise ConfigError(f"invalid seed {seed} in --seeds {text!r}: seeds must be >= 0")
        if seed in seeds:
            raise ConfigError(f"invalid --seeds {text!r}: seed {seed} is listed twice")
        seeds.append(seed)
    if not seeds:
        raise ConfigError(f"invalid --seeds {text!r}: a study needs at least one seed")
    return tuple(seeds)


def expand_backbones(spec: str) -> tuple[str, ...]:
    """Expand ``--backbones``: ``all`` is the four multi-interest backbones; others by name."""
    import backbones

    return expand_names(spec, backbones.REGISTRY, backbones.MULTI_INTEREST, "backbone")


def expand_strategies(spec: str) -> tuple[str, ...]:
    """Expand ``--strategies``: ``all`` is argmax, bam, gumbel and annealed; the controls by name."""
    import strategies

    return expand_names(spec, strategies.REGISTRY, strategies.DEFAULT, "strategy")


def _option_names(kind: str, name: str) -> list[str]:
    if kind == "backbone":
        import backbones

        return list(backbones.backbone_options(name))
    import strategies

    options_class = lookup(strategies.REGISTRY, name, "strategy").options_class
    return [item.name for item in dataclasses.fields(options_class)]


def scope_options(
    raw: Mapping[str, Any], names: Sequence[str], kind: str
) -> dict[str, dict[str, Any]]:
    """Assign ``--backbone-option`` or ``--strategy-option`` values to the study's components.

    A key ``NAME.KEY`` (e.g. ``gumbel.tau``) sets option ``KEY`` of component
    ``NAME`` only. A plain key (``tau``) sets the option of every component of
    the study that has an option of that name.

    Args:
        raw: Option values by key, as parsed from ``KEY=VALUE`` flags.
        names: The backbones or strategies of the study.
        kind: ``"backbone"`` or ``"strategy"``.

    Returns:
        ``{component: {option: value}}`` for the components that get options.

    Raises:
        ConfigError: If a scoped component is not in the study, or no
            component of the study has the option (the message lists the
            options they have).
    """
    scoped: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        owner, dot, option = key.rpartition(".")
        if dot:
            if owner not in names:
                raise ConfigError(
                    f"invalid {kind} option {key!r}: {kind} {owner!r} is not in this study; "
                    f"valid {kind} names: {', '.join(names)}"
                )
            valid = _option_names(kind, owner)
            if not valid:
                raise ConfigError(f"invalid {kind} option {key!r}: {owner} takes no options")
            if option not in valid:
                raise _unknown_option(kind, option, [owner])
            scoped.setdefault(owner, {})[option] = value
            continue
        takers = [name for name in names if key in _option_names(kind, name)]
        if not takers:
            raise _unknown_option(kind, key, names)
        for name in takers:
            scoped.setdefault(name, {})[key] = value
    return scoped


def _unknown_option(kind: str, option: str, names: Sequence[str]) -> ConfigError:
    """Build the error for an option that none of ``names`` takes, listing the options they do take."""
    with_options = [name for name in names if _option_names(kind, name)]
    if not with_options:
        return ConfigError(
            f"invalid {kind} option {option!r}: no {kind} of this study takes options"
        )
    owners = ", ".join(with_options[:-1]) + " or " if len(with_options) > 1 else ""
    owners += with_options[-1]
    valid = sorted({name for owner in with_options for name in _option_names(kind, owner)})
    return ConfigError(
        f"unknown {kind} option {option!r} for {owners}; valid options: {', '.join(valid)}"
    )


@dataclass(frozen=True)
class Ablation:
    """A one-setting sweep: every value of ``factor`` is run as its own cell.

    Attributes:
        factor: The setting as the user wrote it, e.g. ``strategy.tau``.
        values: The values, already converted to the setting's type.
    """

    factor: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError(f"invalid ablation of {self.factor}: give at least one value")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ConfigError(f"invalid ablation of {self.factor}: a value is listed twice")

    @property
    def path(self) -> ConfigPath:
        """The parsed setting."""
        return parse_path(self.factor, label="factor")


@dataclass(frozen=True)
class Cell:
    """One run of a study.

    Attributes:
        config: The run's full configuration.
        value: The ablation factor's value (``None`` outside ablations).
    """

    config: RunConfig
    value: Any = None

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def dataset(self) -> str:
        return self.config.data.name

    @property
    def backbone(self) -> str:
        return self.config.model.backbone

    @property
    def strategy(self) -> str:
        return self.config.strategy.name

    @property
    def seed(self) -> int:
        return self.config.seed

    def to_dict(self) -> dict[str, Any]:
        """Describe the cell for ``study.json`` and storage attributes."""
        entry: dict[str, Any] = {
            "run_id": self.run_id,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "strategy": self.strategy,
            "method": self.config.method,
            "seed": self.seed,
        }
        if self.value is not None:
            entry["value"] = self.value
        return entry


@dataclass(frozen=True)
class Component:
    """A (data set, backbone, strategy) triple: what tuning optimises and seeds repeat."""

    data: DataConfig
    backbone: str
    strategy: str

    @property
    def key(self) -> str:
        """``dataset/backbone+strategy``, used in file and Optuna study names."""
        return f"{self.data.name}/{self.backbone}+{self.strategy}"


@dataclass(frozen=True)
class StudySpec:
    """Everything that decides which runs a study makes.

    Attributes:
        name: Folder name under the output root.
        datasets: One DataConfig per data set.
        backbones: Backbone names.
        strategies: Strategy names.
        seeds: Run seeds; each cell is repeated for every seed.
        model: Sizes shared by every backbone (its ``backbone`` and
            ``options`` fields are ignored; see ``backbone_options``).
        train: Training settings shared by every run.
        backbone_options: Options per backbone name.
        strategy_options: Options per strategy name.
        mode: ``grid`` runs every cell with the given settings; ``tune``
            first tunes every component with Optuna, then runs the best
            settings over all seeds.
        trials: Tuning trials per component (tune mode).
        preset: Name of the preset the training settings came from, if any.
        ablation: The varied setting of an ``harness ablation`` study.
        tune_seed: Seed of the Optuna samplers.
    """

    name: str
    datasets: tuple[DataConfig, ...]
    backbones: tuple[str, ...]
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backbone_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    strategy_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mode: StudyMode = "grid"
    trials: int = 20
    preset: str | None = None
    ablation: Ablation | None = None
    tune_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("study mode", self.mode, StudyMode)
        if not _NAME_PATTERN.match(self.name):
            raise ConfigError(
                f"invalid study name {self.name!r}: use letters, digits and . _ + = - "
                "(it becomes a folder name)"
            )
        if not self.datasets:
            raise ConfigError("invalid study: give at least one --dataset")
        names = [data.name for data in self.datasets]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"invalid study: two data sets are both named {name!r} in tables; "
                    "rename one of the files"
                )
        if not self.backbones or not self.strategies:
            raise ConfigError("invalid study: give at least one backbone and one strategy")
        if not self.seeds:
            raise ConfigError("invalid study: a study needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"invalid seeds {list(self.seeds)}: seeds must be distinct and >= 0")
        if self.trials < 1:
            raise ConfigError(f"invalid --trials {self.trials}: tuning needs at least one trial")
        if self.ablation is not None:
            if self.mode != "grid":
                raise ConfigError("invalid ablation: an ablation runs a grid, not a tuning study")
            if len(self.backbones) != 1 or len(self.strategies) != 1:
                raise ConfigError(
                    "invalid ablation: it varies one setting of one backbone and one strategy"
                )
            check_option(self.ablation.path, self.backbones[0], self.strategies[0])

    @property
    def components(self) -> list[Component]:
        """Every (data set, backbone, strategy) triple, data sets outermost."""
        return [
            Component(data, backbone, strategy)
            for data in self.datasets
            for backbone in self.backbones
            for strategy in self.strategies
        ]

    def base_config(self, component: Component, seed: int) -> RunConfig:
        """The run config of ``component`` at ``seed`` with the study's shared settings."""
        model = dataclasses.replace(
            self.model,
            backbone=component.backbone,
            options=dict(self.backbone_options.get(component.backbone, {})),
        )
        strategy = StrategyConfig(
            name=component.strategy,
            options=dict(self.strategy_options.get(component.strategy, {})),
        )
        return RunConfig(
            data=component.data, model=model, strategy=strategy, train=self.train, seed=seed
        )

    def cells(self, tuned: Mapping[str, Mapping[str, Any]] | None = None) -> list[Cell]:
        """Expand the study into its runs.

        Args:
            tuned: Tune mode only: the best ``{path: value}`` settings per
                component key. A component missing from it (its tuning
                produced no completed trial) gets no cells.

        Returns:
            The cells, ordered by data set, backbone, strategy (or ablation
            value) and seed.
        """
        if self.mode == "tune" and tuned is None:
            raise ValueError("a tuning study has cells only once its best settings are known")
        result: list[Cell] = []
        for component in self.components:
            if tuned is not None:
                if component.key not in tuned:
                    continue
                overrides = tuned[component.key]
            else:
                overrides = {}
            values: tuple[Any, ...] = self.ablation.values if self.ablation is not None else (None,)
            for value in values:
                for seed in self.seeds:
                    config = apply_values(self.base_config(component, seed), overrides)
                    if self.ablation is not None:
                        config = with_value(config, self.ablation.path, value)
                    result.append(Cell(config, value))
        return result

    def identity(self) -> dict[str, Any]:
        """Return the part of the specification that decides the runs' numbers.

        Two invocations with equal identities run the same study. The name,
        the preset label, the trial budget and the settings that never change
        results (device, threads, evaluation batch size) are left out.
        """
        train = dataclasses.asdict(self.train)
        for name in _NON_RESULT_TRAIN_FIELDS:
            train.pop(name)
        model = dataclasses.asdict(self.model)
        model.pop("backbone")
        model.pop("options")
        identity: dict[str, Any] = {
            "mode": self.mode,
            "datasets": [dataclasses.asdict(data) for data in self.datasets],
            "backbones": list(self.backbones),
            "strategies": list(self.strategies),
            "seeds": list(self.seeds),
            "model": model,
            "train": train,
            "backbone_options": {key: dict(value) for key, value in self.backbone_options.items()},
            "strategy_options": {key: dict(value) for key, value in self.strategy_options.items()},
        }
        if self.mode == "tune":
            identity["tune_seed"] = self.tune_seed
        if self.ablation is not None:
            identity["ablation"] = {
                "factor": self.ablation.path.key,
                "values": list(self.ablation.values),
            }
        return identity

    def to_dict(self) -> dict[str, Any]:
        """The full specification as JSON data (the content of ``study.json`` before cells)."""
        data: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode,
            "preset": self.preset,
            "datasets": [data.name for data in self.datasets],
            "data": [dataclasses.asdict(data) for data in self.datasets],
            "backbones": list(self.backbones),
            "strategies": list(self.strategies),
            "seeds": list(self.seeds),
            "model": {
                key: value
                for key, value in dataclasses.asdict(self.model).items()
                if key not in ("backbone", "options")
            },
            "train": dataclasses.asdict(self.train),
            "backbone_options": {key: dict(value) for key, value in self.backbone_options.items()},
            "strategy_options": {key: dict(value) for key, value in self.strategy_options.items()},
        }
        if self.mode == "tune":
            data["trials"] = self.trials
            data["tune_seed"] = self.tune_seed
        if self.ablation is not None:
            data["ablation"] = {
                "factor": self.ablation.factor,
                "path": self.ablation.path.key,
                "values": list(self.ablation.values),
            }
        return data


def default_study_name(
    datasets: Sequence[DataConfig],
    mode: StudyMode,
    ablation: Ablation | None = None,
    backbone: str = "",
    strategy: str = "",
) -> str:
    """Derive a study name from the arguments: ``synthetic-grid``, ``ml-100k-tune``, ...

    An ablation is named after what it varies: ``synthetic-remi+bam-model.reg_lambda``.
    """
    data_part = "+".join(data.name for data in datasets)
    if ablation is not None:
        name = f"{data_part}-{backbone}+{strategy}-{ablation.factor}"
    else:
        name = f"{data_part}-{mode}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name)


def study_dir(output: Path | str, name: str) -> Path:
    """The folder of study ``name`` under ``output``."""
    return Path(output) / name


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found.extend(_differences(before, after, prefix=f"{path}."))
        elif before != after:
            found.append(f"{path}: {before!r} -> {after!r}")
    return found


def check_existing(directory: Path, spec: StudySpec) -> None:
    """Check that ``directory`` contains no study other than ``spec``.

    Raises:
        ConfigError: If ``study.json`` exists with a different identity; the
            message lists what differs.
    """
    existing = runs.read_json(directory / STUDY_FILE)
    if existing is None:
        return
    previous = existing.get("identity")
    if previous is None:
        raise ConfigError(
            f"{directory / STUDY_FILE} was not written by this version of harness study; "
            "pass another --name or --output"
        )
    differences = _differences(previous, _json_roundtrip(spec.identity()))
    if differences:
        listed = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise ConfigError(
            f"{directory} already contains a different study ({listed}); rerun with the same "
            "arguments to resume it, or pass another --name to start a new one"
        )


def _json_roundtrip(data: Any) -> Any:
    # study.json stores the identity as JSON, where tuples become lists.
    return json.loads(json.dumps(data))


def write_study_json(
    directory: Path,
    spec: StudySpec,
    *,
    storage: str,
    cells: Sequence[Cell] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``study.json``: the specification, its identity, the storage and the cells.

    Args:
        directory: The study folder.
        spec: The study.
        storage: The Optuna storage URL or journal file, as opened.
        cells: The runs, once they are known (in tune mode, after tuning).
        extra: Further top-level keys.

    Returns:
        The path written.
    """
    payload = spec.to_dict()
    payload["identity"] = spec.identity()
    payload["storage"] = storage
    payload["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if cells is not None:
        payload["runs"] = [cell.to_dict() for cell in cells]
    payload.update(extra or {})
    path = directory / STUDY_FILE
    runs.write_json(path, payload)
    return path
