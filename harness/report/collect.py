"""Read a study folder's run files into data frames.

A study folder contains ``study.json`` (optional here) and ``runs/<run_id>/``
with ``config.json``, ``metrics.json``, ``per_user.parquet`` and
``curve.csv`` for a finished run, or ``error.json`` for a failed one. Only
finished runs feed the tables. Every other run folder, and every cell of
the expected grid (data set x method x seed) without a finished run, is
listed in :attr:`StudyResults.missing`, so a report over a partial study
shows what it lacks instead of failing.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import DataConfig
from harness.errors import DataError
from harness.report.text import count_noun

logger = logging.getLogger(__name__)

BALANCE_KEYS = (
    "entropy_norm",
    "effective_interests",
    "max_share",
    "unused_fraction",
    "selection_entropy",
    "redundancy",
)
DATASET_STAT_KEYS = ("users", "items", "interactions", "density")
MISSING_COLUMNS = ("dataset", "method", "variant", "seed", "status", "run_id", "detail")


@dataclass(frozen=True)
class Ablation:
    """The factor an ablation study varies.

    Attributes:
        factor: The factor as the user named it, e.g. ``"strategy.tau"``.
        values: The factor values the study declares, in its order.
        path: The dotted path looked up in each run config (the explicit form
            ``"strategy.options.tau"`` when study.json records it; the factor
            itself otherwise).
    """

    factor: str
    values: tuple[Any, ...]
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.factor)

    @property
    def short_name(self) -> str:
        """Last component of the factor path, used in column labels (``tau``)."""
        return self.factor.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class StudyResults:
    """The finished runs of one study and what is missing from it.

    Attributes:
        study_dir: The study folder.
        spec: Contents of ``study.json`` (empty when the file is absent).
        runs: One row per finished run: ``run_id``, ``path``, ``dataset``,
            ``method``, ``backbone``, ``strategy``, ``seed``, ``variant``
            (``"tau=0.5"`` in an ablation study, else ``""``), ``factor_value``,
            ``label`` (the table column: the method, plus the variant when
            there is one) and ``num_interests``. It also has one column per
            test metric and one per balance key in :data:`BALANCE_KEYS`.
        metrics: Test metric names present in at least one finished run, sorted.
        missing: One row per expected cell or run folder without a finished
            run, with the columns in :data:`MISSING_COLUMNS`.
        dataset_stats: Per data set name, the ``dataset_stats`` record of its
            first finished run that has one.
        ablation: The ablation factor, when ``study.json`` declares one.
        warnings: Messages about run folders that could not be read.
    """

    study_dir: Path
    spec: dict[str, Any]
    runs: pd.DataFrame
    metrics: tuple[str, ...]
    missing: pd.DataFrame
    dataset_stats: dict[str, dict[str, float]]
    ablation: Ablation | None
    warnings: tuple[str, ...]

    @property
    def datasets(self) -> tuple[str, ...]:
        """Data set names with at least one finished run: study.json's order, then the rest sorted."""
        declared = [_spec_dataset_name(entry) for entry in _spec_list(self.spec, "datasets")]
        return _declared_first(declared, self.runs["dataset"])

    @property
    def backbones(self) -> tuple[str, ...]:
        """Backbone names with at least one finished run: study.json's order, then the rest sorted."""
        return _declared_first(_spec_list(self.spec, "backbones"), self.runs["backbone"])

    @property
    def strategies(self) -> tuple[str, ...]:
        """Strategy names with at least one finished run: study.json's order, then the rest sorted."""
        return _declared_first(_spec_list(self.spec, "strategies"), self.runs["strategy"])


def _declared_first(declared: list[Any], found: pd.Series) -> tuple[str, ...]:
    """Order the names in ``found``: those in ``declared`` in its order, then the others sorted."""
    present = set(found)
    ordered = [name for name in dict.fromkeys(declared) if name in present]
    return tuple(ordered + sorted(present - set(ordered)))


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; raise DataError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"cannot read {path}: expected a JSON object, found {type(data).__name__}")
    return data


def resolve_factor(config: dict[str, Any], factor: str) -> Any:
    """Look up a dotted ablation factor in a run config dictionary.

    Each path component is looked up in the current mapping and, when it is
    not there, in that mapping's ``options``. So ``"strategy.tau"`` finds
    ``config["strategy"]["options"]["tau"]`` and ``"model.num_interests"``
    finds ``config["model"]["num_interests"]``.

    Args:
        config: ``RunConfig.to_dict()`` as stored under ``config`` in ``config.json``.
        factor: Dotted path such as ``"train.hard_negative_beta"``.

    Returns:
        The value, or ``None`` when the run config does not have the factor
        (for example the reference strategy in a ``strategy.tau`` ablation).
    """
    node: Any = config
    for key in factor.split("."):
        if not isinstance(node, dict):
            return None
        if key in node:
            node = node[key]
        elif isinstance(node.get("options"), dict) and key in node["options"]:
            node = node["options"][key]
        else:
            return None
    return node


def format_factor_value(value: Any) -> str:
    """Format a factor value for labels, so that ``0.50`` and ``0.5`` match."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _spec_list(spec: dict[str, Any], key: str) -> list[Any]:
    """Return ``spec[key]`` as a list, accepting a comma-separated string."""
    value = spec.get(key)
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip() and part.strip() != "all"]
    if isinstance(value, list):
        return value
    return []


def _spec_dataset_name(entry: Any) -> str | None:
    """Map a data set entry of study.json (a name, a source path or a dict) to its table name."""
    source = entry.get("source") if isinstance(entry, dict) else entry
    if not isinstance(source, str) or not source:
        return None
    if isinstance(entry, str) and "/" not in entry and "\\" not in entry:
        return entry
    return DataConfig(source=source).name


def _read_ablation(spec: dict[str, Any]) -> Ablation | None:
    raw = spec.get("ablation")
    if not isinstance(raw, dict) or not isinstance(raw.get("factor"), str):
        return None
    values = raw.get("values") or []
    path = raw.get("path") if isinstance(raw.get("path"), str) else raw["factor"]
    return Ablation(
        factor=raw["factor"], values=tuple(values) if isinstance(values, list) else (), path=path
    )


def _finished_row(
    run_dir: Path, metrics: dict[str, Any], config: dict[str, Any] | None, ablation: Ablation | None
) -> dict[str, Any]:
    """Flatten one finished run into a row of :attr:`StudyResults.runs`."""
    for key in ("dataset", "method", "seed", "test"):
        if key not in metrics:
            raise DataError(f"cannot read {run_dir / 'metrics.json'}: missing key {key!r}")
    test = metrics["test"]
    if not isinstance(test, dict):
        raise DataError(f"cannot read {run_dir / 'metrics.json'}: 'test' is not an object")
    method = str(metrics["method"])
    backbone, _, strategy = method.partition("+")
    row: dict[str, Any] = {
        "run_id": str(metrics.get("run_id", run_dir.name)),
        "path": run_dir,
        "dataset": str(metrics["dataset"]),
        "method": method,
        "backbone": str(metrics.get("backbone", backbone)),
        "strategy": str(metrics.get("strategy", strategy)),
        "seed": int(metrics["seed"]),
        "num_interests": metrics.get("num_interests"),
        "created": (config or {}).get("created", ""),
    }
    row.update({name: float(value) for name, value in test.items()})
    balance = metrics.get("balance") or {}
    row.update({key: float(balance.get(key, math.nan)) for key in BALANCE_KEYS})

    row["variant"] = ""
    row["factor_value"] = None
    if ablation is not None and config is not None:
        value = resolve_factor(config.get("config", {}), ablation.path)
        if value is not None:
            row["factor_value"] = value
            row["variant"] = f"{ablation.short_name}={format_factor_value(value)}"
    return row


def _cell_of_config(config: dict[str, Any], ablation: Ablation | None) -> dict[str, Any]:
    """Locate an unfinished run's cell from its config.json."""
    inner = config.get("config", {})
    seed = inner.get("seed") if isinstance(inner, dict) else None
    variant = ""
    if ablation is not None and isinstance(inner, dict):
        value = resolve_factor(inner, ablation.path)
        if value is not None:
            variant = f"{ablation.short_name}={format_factor_value(value)}"
    return {
        "dataset": config.get("dataset"),
        "method": config.get("method"),
        "variant": variant,
        "seed": seed,
    }


def _scan_runs(
    runs_dir: Path, ablation: Ablation | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], dict[str, dict[str, float]]]:
    """Read every run folder: finished rows, other folders, warnings and data set statistics."""
    finished: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    warnings: list[str] = []
    dataset_stats: dict[str, dict[str, float]] = {}

    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        config: dict[str, Any] | None = None
        config_path = run_dir / "config.json"
        if config_path.is_file():
            try:
                config = _read_json(config_path)
            except DataError as exc:
                warnings.append(f"{exc}; the run's ablation factor is unknown")

        metrics_path = run_dir / "metrics.json"
        error_path = run_dir / "error.json"
        base = {
            "run_id": run_dir.name,
            "dataset": None,
            "method": None,
            "variant": "",
            "seed": None,
        }
        if config is not None:
            base.update(_cell_of_config(config, ablation))

        if metrics_path.is_file():
            try:
                metrics = _read_json(metrics_path)
                if metrics.get("status") != "finished":
                    others.append(
                        {
                            **base,
                            "status": "unfinished",
                            "detail": f"status {metrics.get('status')!r}",
                        }
                    )
                    continue
                row = _finished_row(run_dir, metrics, config, ablation)
            except (DataError, TypeError, ValueError) as exc:
                message = f"skipped run {run_dir.name}: {exc}"
                warnings.append(message)
                others.append({**base, "status": "corrupt", "detail": str(exc)})
                continue
            finished.append(row)
            stats = metrics.get("dataset_stats")
            if isinstance(stats, dict) and row["dataset"] not in dataset_stats:
                dataset_stats[row["dataset"]] = {
                    k: float(stats[k]) for k in DATASET_STAT_KEYS if k in stats
                }
        elif error_path.is_file():
            try:
                error = str(_read_json(error_path).get("error", "")).strip().splitlines()
                detail = error[0] if error else "error.json without a message"
            except DataError as exc:
                detail = str(exc)
            others.append({**base, "status": "failed", "detail": detail})
        else:
            others.append(
                {**base, "status": "unfinished", "detail": "no metrics.json or error.json"}
            )

    return finished, others, warnings, dataset_stats


def _drop_duplicates(runs: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Keep one run per (data set, label, seed): the most recently created one."""
    keys = ["dataset", "label", "seed"]
    runs = runs.sort_values(["created", "run_id"], kind="stable")
    duplicated = runs.duplicated(keys, keep=False)
    if duplicated.any():
        for (dataset, label, seed), group in runs[duplicated].groupby(keys, sort=True):
            latest = group["run_id"].iloc[-1]
            dropped = ", ".join(group["run_id"].iloc[:-1])
            warnings.append(
                f"{len(group)} finished runs for {dataset} / {label} / seed {seed}; "
                f"using the latest ({latest}) and ignoring {dropped}"
            )
    return runs.drop_duplicates(keys, keep="last").reset_index(drop=True)


def _listed_cells(spec: dict[str, Any], ablation: Ablation | None) -> pd.DataFrame | None:
    """Read the expected cells from study.json's ``runs`` list, or return None when it has none."""
    entries = spec.get("runs")
    if not isinstance(entries, list) or not entries:
        return None
    rows = []
    for entry in entries:
        if not isinstance(entry, dict) or not {"dataset", "method", "seed"} <= set(entry):
            logger.warning("study.json lists a run without dataset, method and seed: %r", entry)
            continue
        variant = ""
        if ablation is not None and entry.get("value") is not None:
            variant = f"{ablation.short_name}={format_factor_value(entry['value'])}"
        rows.append((str(entry["dataset"]), str(entry["method"]), variant, int(entry["seed"])))
    return pd.DataFrame(rows, columns=["dataset", "method", "variant", "seed"]).drop_duplicates()


def _expected_cells(
    spec: dict[str, Any], runs: pd.DataFrame, others: pd.DataFrame, ablation: Ablation | None
) -> pd.DataFrame:
    """Build the grid of (data set, method, variant, seed) cells the study should have.

    The cell list that ``harness study`` writes to study.json under ``runs``
    is used when present. Otherwise the grid is the product of the data sets,
    methods and seeds found in the run folders and in study.json's lists.
    """
    listed = _listed_cells(spec, ablation)
    if listed is not None:
        return listed
    seen = pd.concat([runs[["dataset", "method", "variant", "seed"]], others], ignore_index=True)
    seen = seen.dropna(subset=["dataset", "method", "seed"])

    datasets = list(pd.unique(seen["dataset"]))
    for entry in _spec_list(spec, "datasets"):
        name = _spec_dataset_name(entry)
        if name is not None and name not in datasets:
            datasets.append(name)
    methods = list(pd.unique(seen["method"]))
    # NOTE: a study may leave out some backbone x strategy pairs on purpose;
    # such pairs are then listed as "not run", which is a false alarm.
    for backbone in _spec_list(spec, "backbones"):
        for strategy in _spec_list(spec, "strategies"):
            method = f"{backbone}+{strategy}"
            if method not in methods:
                methods.append(method)
    seeds = sorted(
        {int(s) for s in seen["seed"]}
        | {int(s) for s in _spec_list(spec, "seeds") if isinstance(s, int)}
    )

    variants_of: dict[str, list[str]] = {}
    for method in methods:
        declared = sorted(set(seen.loc[seen["method"] == method, "variant"]) - {""})
        if ablation is not None and declared:
            declared_values = [
                f"{ablation.short_name}={format_factor_value(v)}" for v in ablation.values
            ]
            variants_of[method] = list(dict.fromkeys(declared_values + declared))
        else:
            variants_of[method] = declared or [""]

    rows = [
        (dataset, method, variant, seed)
        for dataset in datasets
        for method in methods
        for variant in variants_of[method]
        for seed in seeds
    ]
    return pd.DataFrame(rows, columns=["dataset", "method", "variant", "seed"])


def _missing_cells(
    expected: pd.DataFrame, runs: pd.DataFrame, others: pd.DataFrame
) -> pd.DataFrame:
    """List expected cells without a finished run, and run folders that fit no cell."""
    keys = ["dataset", "method", "variant", "seed"]
    done = runs[keys].assign(_done=True)
    missing = expected.merge(done, on=keys, how="left")
    missing = missing[missing["_done"].isna()].drop(columns="_done")

    located = others.dropna(subset=["dataset", "method", "seed"]).copy()
    if not located.empty:
        located["seed"] = located["seed"].astype(int)
    # A failed run that was retried and finished is no longer missing.
    located = located.merge(done, on=keys, how="left")
    located = located[located["_done"].isna()].drop(columns="_done")
    missing = missing.merge(located, on=keys, how="left")
    missing["status"] = missing["status"].fillna("not run")
    missing["run_id"] = missing["run_id"].fillna("")
    missing["detail"] = missing["detail"].fillna("no run folder for this cell")

    unlocated = others[others[["dataset", "method", "seed"]].isna().any(axis=1)]
    table = pd.concat([missing, unlocated], ignore_index=True)
    table = table.reindex(columns=list(MISSING_COLUMNS))
    table["seed"] = table["seed"].astype("Int64")
    return table.sort_values(
        ["dataset", "method", "variant", "seed"], na_position="last"
    ).reset_index(drop=True)


def load_study(study_dir: Path) -> StudyResults:
    """Read every run folder of a study.

    Run folders whose ``metrics.json`` cannot be parsed or lacks required
    keys are skipped with a logged warning that names the file.

    Args:
        study_dir: A folder with a ``runs/`` subfolder, written by ``harness study``
            or ``harness train``.

    Returns:
        The finished runs and the list of missing cells.

    Raises:
        DataError: If ``study_dir`` has no ``runs/`` folder, its ``study.json``
            is unreadable, or no run has finished.
    """
    study_dir = Path(study_dir)
    runs_dir = study_dir / "runs"
    if not runs_dir.is_dir():
        raise DataError(
            f"{study_dir} is not a study folder: it has no runs/ subfolder; "
            "pass the folder that `harness study` or `harness train` wrote (for example results/NAME)"
        )
    spec_path = study_dir / "study.json"
    spec = _read_json(spec_path) if spec_path.is_file() else {}
    if not spec:
        logger.info(
            "%s has no study.json; the expected grid is taken from the run folders", study_dir
        )
    ablation = _read_ablation(spec)

    finished, other_rows, warnings, dataset_stats = _scan_runs(runs_dir, ablation)
    for message in warnings:
        logger.warning("%s", message)
    others = pd.DataFrame(
        other_rows, columns=["run_id", "dataset", "method", "variant", "seed", "status", "detail"]
    )
    if not finished:
        counts = others["status"].value_counts().to_dict() if not others.empty else {}
        found = (
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no run folders"
        )
        raise DataError(
            f"{study_dir} has no finished runs ({found}); run or resume the study first"
        )

    runs = pd.DataFrame(finished)
    runs["label"] = np.where(
        runs["variant"] == "", runs["method"], runs["method"] + " (" + runs["variant"] + ")"
    )
    read_warnings = len(warnings)
    runs = _drop_duplicates(runs, warnings)
    for message in warnings[read_warnings:]:
        logger.warning("%s", message)
    metrics = tuple(sorted(c for c in runs.columns if "@" in c and runs[c].notna().any()))
    missing = _missing_cells(_expected_cells(spec, runs, others, ablation), runs, others)
    if not missing.empty:
        verb = "has" if len(missing) == 1 else "have"
        logger.warning(
            "%s of %s %s no finished run; the report lists them",
            count_noun(len(missing), "cell"),
            study_dir,
            verb,
        )
    return StudyResults(
        study_dir=study_dir,
        spec=spec,
        runs=runs,
        metrics=metrics,
        missing=missing,
        dataset_stats=dataset_stats,
        ablation=ablation,
        warnings=tuple(warnings),
    )


def load_per_user(paths: list[Path], columns: list[str]) -> pd.DataFrame:
    """Read and stack the per-user files of several runs.

    Args:
        paths: Run folders.
        columns: Columns to read besides the user key; those absent from a file
            are filled with ``nan``.

    Returns:
        One row per (run, user) with ``run`` (the folder name), ``user_key``
        (``user_id`` when the file has it, else ``user``) and ``columns``.
        Runs without a readable ``per_user.parquet`` are skipped with a
        logged warning.
    """
    frames = []
    for path in paths:
        file = path / "per_user.parquet"
        try:
            frame = pd.read_parquet(file)
        except (OSError, ValueError) as exc:
            logger.warning(
                "skipped per-user values of run %s: cannot read %s: %s", path.name, file, exc
            )
            continue
        key = "user_id" if "user_id" in frame.columns else "user"
        if key not in frame.columns:
            logger.warning(
                "skipped per-user values of run %s: %s has no user or user_id column",
                path.name,
                file,
            )
            continue
        out = frame.reindex(columns=[key, *columns]).rename(columns={key: "user_key"})
        out.insert(0, "run", path.name)
        frames.append(out)
    if not frames:
        return pd.DataFrame(columns=["run", "user_key", *columns])
    return pd.concat(frames, ignore_index=True)
