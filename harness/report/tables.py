"""Tables of a report as data: cells with their emphasis, before any output format.

Each builder returns a :class:`Table`: formatted cells with bold, underline
and significance marks for LaTeX and Markdown, and a tidy data frame with the
unformatted numbers for CSV. :mod:`harness.report.render` turns a table into
text. Every metric in these tables is higher-is-better (recall, nDCG, hit
rate, MRR), so "best" means the largest mean.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from harness import stats
from harness.report.collect import BALANCE_KEYS, StudyResults, format_factor_value

logger = logging.getLogger(__name__)

Mark = Literal["", "better", "worse"]
Spread = Literal["std", "ci"]

BALANCE_HEADERS = {
    "entropy_norm": "Norm. entropy",
    "effective_interests": "Eff. interests",
    "max_share": "Max share",
    "unused_fraction": "Unused frac.",
    "selection_entropy": "Sel. entropy",
    "redundancy": "Redundancy",
}


@dataclass(frozen=True)
class Cell:
    """One formatted table cell.

    Attributes:
        text: The value as plain text (renderers escape it).
        spread: Standard deviation or CI half-width as text, shown after a
            plus-minus sign; empty for none.
        bold: Best value of its row.
        underline: Second-best value of its row.
        mark: ``"better"`` or ``"worse"`` when the difference to the reference
            is significant after Holm's correction, in that direction.
    """

    text: str
    spread: str = ""
    bold: bool = False
    underline: bool = False
    mark: Mark = ""


@dataclass(frozen=True)
class Row:
    """One table row.

    Attributes:
        labels: Texts of the leading label columns (empty where a label repeats).
        cells: The value cells.
        new_block: Whether a rule separates this row from the one above.
    """

    labels: tuple[str, ...]
    cells: tuple[Cell, ...]
    new_block: bool = False


@dataclass(frozen=True)
class Table:
    """A rendered-format-independent table.

    Attributes:
        name: File stem of the outputs (``main`` -> ``main.tex``, ``main.md``, ``main.csv``).
        title: Caption.
        description: One line for ``index.md`` on what the table shows.
        stub: Headers of the leading label columns.
        columns: Headers of the value columns.
        groups: Spanning headers over consecutive value columns as
            ``(text, span)`` pairs covering all of ``columns``; empty for no
            spanning header row.
        flat_columns: Value column headers for formats without spanning
            headers (Markdown); defaults to ``columns``.
        rows: The body.
        notes: Sentences printed under the table (legend of marks).
        data: Tidy numbers behind the table, written as CSV.
    """

    name: str
    title: str
    description: str
    stub: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    data: pd.DataFrame
    groups: tuple[tuple[str, int], ...] = ()
    flat_columns: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.flat_columns:
            object.__setattr__(self, "flat_columns", self.columns)
        if self.groups and sum(span for _, span in self.groups) != len(self.columns):
            raise ValueError(
                f"table {self.name}: column groups do not cover the {len(self.columns)} columns"
            )
        for row in self.rows:
            if len(row.labels) != len(self.stub) or len(row.cells) != len(self.columns):
                raise ValueError(f"table {self.name}: a row does not match the header")


def format_number(value: float, digits: int) -> str:
    """Format a number with a fixed number of decimals; ``nan`` becomes an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _rank_flags(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flag the best and the second-best values of a row (ties share a rank; ``nan`` never ranks)."""
    best = np.zeros(means.shape, dtype=bool)
    second = np.zeros(means.shape, dtype=bool)
    finite = means[~np.isnan(means)]
    distinct = np.unique(finite)[::-1]
    if distinct.size >= 1:
        best = means == distinct[0]
    if distinct.size >= 2:
        second = means == distinct[1]
    return best, second


def _spread(
    values: np.ndarray, spread: Spread, confidence: float
) -> tuple[float, float, float, float]:
    """Return the mean, standard deviation and t-based CI of a method's per-seed values."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    low, high = stats.mean_ci(values, confidence)
    return float(values.mean()), std, low, high


def method_order(results: StudyResults) -> list[tuple[str, str]]:
    """Order table columns as ``harness study`` lists its cells.

    Backbones and, within each, strategies follow study.json's order (names
    it does not list come after, sorted). Within a strategy, runs without
    the ablation factor come first, then the variants in the order of the
    ablation's declared values, then any other variants sorted.

    Returns:
        ``(backbone, label)`` pairs.
    """
    runs = results.runs.drop_duplicates("label")
    backbone_rank = {name: i for i, name in enumerate(results.backbones)}
    strategy_rank = {name: i for i, name in enumerate(results.strategies)}
    variant_rank = {"": -1}
    if results.ablation is not None:
        short = results.ablation.short_name
        for value in results.ablation.values:
            variant_rank.setdefault(f"{short}={format_factor_value(value)}", len(variant_rank))
    ordered = runs.assign(
        _backbone=runs["backbone"].map(backbone_rank),
        _strategy=runs["strategy"].map(strategy_rank),
        _variant=runs["variant"].map(lambda v: variant_rank.get(v, len(variant_rank))),
    ).sort_values(["_backbone", "_strategy", "_variant", "variant"], kind="stable")
    return list(zip(ordered["backbone"], ordered["label"], strict=True))


def main_table(
    results: StudyResults,
    comparisons: pd.DataFrame,
    *,
    metrics: list[str],
    reference: str | None,
    alpha: float,
    test: str,
    level: str,
    spread: Spread = "std",
    digits: int = 4,
    confidence: float = 0.95,
) -> Table:
    """Build the main accuracy table in the layout of the BaM paper's Table 2.

    Rows are data set x metric and columns the methods, grouped by backbone.
    A cell is the mean over seeds with its standard deviation (or CI
    half-width). Per row the best mean is bold and the second underlined. A
    mark sits where the difference to the reference strategy on the same
    backbone is significant at ``alpha`` after Holm's correction. A table
    without a reference has no marks. The last column is the relative
    improvement of the best mean over the second best.

    Args:
        results: The study's finished runs.
        comparisons: Output of :func:`harness.report.compare.compare_methods`.
        metrics: Metrics, one row each per data set.
        reference: Reference strategy, or ``None`` for a table without marks.
        alpha: Significance level.
        test: ``"t"``, ``"wilcoxon"`` or ``"randomization"``: whose adjusted p-value marks cells.
        level: ``"per-user"`` or ``"per-seed"``: the pairing of that test.
        spread: ``"std"`` over seeds or the ``"ci"`` half-width of the mean.
        digits: Decimals.
        confidence: Level of the CI.

    Returns:
        The table; its data has one row per (data set, metric, method).
    """
    order = method_order(results)
    labels = [label for _, label in order]
    runs = results.runs
    chosen = comparisons[comparisons["level"] == level].set_index(["dataset", "metric", "method"])
    p_column = f"p_{test}_holm"

    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for dataset in results.datasets:
        for i, metric in enumerate(metrics):
            summary = []
            for label in labels:
                values = runs.loc[(runs["dataset"] == dataset) & (runs["label"] == label), metric]
                summary.append(_spread(values.to_numpy(dtype=float), spread, confidence))
            means = np.array([s[0] for s in summary])
            best, second = _rank_flags(means)
            finite = np.sort(means[~np.isnan(means)])[::-1]
            improvement = (
                (finite[0] - finite[1]) / finite[1] * 100.0
                if finite.size >= 2 and finite[1] > 0
                else math.nan
            )

            cells = []
            for j, label in enumerate(labels):
                mean, std, low, high = summary[j]
                key = (dataset, metric, label)
                p_holm = float(chosen.at[key, p_column]) if key in chosen.index else math.nan
                diff = float(chosen.at[key, "mean_diff"]) if key in chosen.index else math.nan
                mark: Mark = ""
                if p_holm < alpha:
                    mark = "better" if diff > 0 else "worse"
                half = (high - low) / 2.0
                shown = std if spread == "std" else half
                cells.append(
                    Cell(
                        text=format_number(mean, digits),
                        spread="" if math.isnan(shown) else format_number(shown, digits),
                        bold=bool(best[j]),
                        underline=bool(second[j]),
                        mark=mark,
                    )
                )
                n_seeds = int(
                    runs.loc[(runs["dataset"] == dataset) & (runs["label"] == label), metric]
                    .notna()
                    .sum()
                )
                records.append(
                    {
                        "dataset": dataset,
                        "metric": metric,
                        "method": label,
                        "n_seeds": n_seeds,
                        "mean": mean,
                        "std": std,
                        "ci_low": low,
                        "ci_high": high,
                        "best": bool(best[j]),
                        "second": bool(second[j]),
                        "p_holm": p_holm,
                        "significant": mark != "",
                        "direction": mark or "none",
                        "improvement_pct": improvement,
                    }
                )
            improvement_text = "–" if math.isnan(improvement) else f"+{improvement:.2f}%"
            rows.append(
                Row(
                    labels=(dataset if i == 0 else "", metric),
                    cells=(*cells, Cell(text=improvement_text)),
                    new_block=i == 0 and bool(rows),
                )
            )

    groups: list[tuple[str, int]] = []
    for backbone, _ in order:
        if groups and groups[-1][0] == backbone:
            groups[-1] = (backbone, groups[-1][1] + 1)
        else:
            groups.append((backbone, 1))
    columns = tuple(
        label.split("+", 1)[1] if label.startswith(f"{backbone}+") else label
        for backbone, label in order
    )
    test_name = {
        "t": "paired t-test",
        "wilcoxon": "Wilcoxon signed-rank test",
        "randomization": "randomization test",
    }
    spread_name = (
        "standard deviation over seeds"
        if spread == "std"
        else f"half-width of the {confidence:.0%} CI"
    )
    if reference is None:
        marks_note = "No significance marks: the report has no reference strategy."
        title = "Test accuracy per data set and metric"
        marks_description = "no significance marks"
    else:
        marks_note = (
            f"† (‡): significantly better (worse) than {reference} on the same backbone, "
            f"{test_name[test]} on {level} values, Holm-corrected over all marked comparisons, "
            f"alpha = {alpha:g}."
        )
        title = f"Test accuracy per data set and metric (reference: {reference})"
        marks_description = f"significance marks against {reference}"
    notes = (
        f"Mean over seeds ± {spread_name}. Bold: best in the row; underlined: second best.",
        marks_note,
        "Improv.: relative improvement of the best mean over the second best.",
    )
    return Table(
        name="main",
        title=title,
        description=(
            "Main accuracy table: mean over seeds per data set, metric and method, best bold, "
            f"second underlined, {marks_description}."
        ),
        stub=("Dataset", "Metric"),
        columns=(*columns, "Improv."),
        groups=(*groups, ("", 1)),
        flat_columns=(*labels, "Improv."),
        rows=tuple(rows),
        notes=notes,
        data=pd.DataFrame(records),
    )


def balance_table(results: StudyResults, *, digits: int = 3) -> Table | None:
    """Build the interest-balance table: per data set and method, mean ± std over seeds.

    Columns follow :data:`BALANCE_KEYS` from ``metrics.json`` ``balance``.

    Returns:
        The table, or ``None`` when no run records balance metrics.
    """
    runs = results.runs
    keys = [k for k in BALANCE_KEYS if runs[k].notna().any()]
    if not keys:
        logger.info("no run records balance metrics; the balance table is left out")
        return None
    order = method_order(results)
    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for dataset in results.datasets:
        first = True
        for _, label in order:
            mine = runs[(runs["dataset"] == dataset) & (runs["label"] == label)]
            if mine.empty:
                continue
            cells = []
            record: dict[str, object] = {"dataset": dataset, "method": label, "n_seeds": len(mine)}
            for key in keys:
                values = mine[key].to_numpy(dtype=float)
                values = values[~np.isnan(values)]
                mean = float(values.mean()) if values.size else math.nan
                std = float(values.std(ddof=1)) if values.size > 1 else math.nan
                cells.append(
                    Cell(
                        text=format_number(mean, digits),
                        spread="" if math.isnan(std) else format_number(std, digits),
                    )
                )
                record[f"{key}_mean"] = mean
                record[f"{key}_std"] = std
            rows.append(
                Row(
                    labels=(dataset if first else "", label),
                    cells=tuple(cells),
                    new_block=first and bool(rows),
                )
            )
            records.append(record)
            first = False
    return Table(
        name="balance",
        title="Interest balance per method (mean ± std over seeds)",
        description=(
            "Interest balance: normalised entropy of top-K interest shares, effective number of interests, "
            "largest share, fraction of users with an unused interest, training selection entropy, redundancy."
        ),
        stub=("Dataset", "Method"),
        columns=tuple(BALANCE_HEADERS[k] for k in keys),
        rows=tuple(rows),
        notes=(
            "Norm. entropy is H/log K of each user's top-K interest shares; eff. interests is exp(H); "
            "unused frac. is the share of users with an interest that scores none of their top-K items; "
            "redundancy is the mean pairwise cosine of a user's interest vectors.",
        ),
        data=pd.DataFrame(records),
    )


def seed_table(results: StudyResults, *, metrics: list[str], digits: int = 4) -> Table:
    """Build the seed-robustness table: spread over seeds and how often each method wins a seed.

    For every (data set, metric, seed) the method with the largest test
    value wins that seed; tied methods all win. ``Wins`` is the number of a
    method's seeds it wins, out of the seeds it has.

    Returns:
        The table; rows are data set x metric x method.
    """
    runs = results.runs
    order = [label for _, label in method_order(results)]
    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for dataset in results.datasets:
        in_dataset = runs[runs["dataset"] == dataset]
        for i, metric in enumerate(metrics):
            by_seed = in_dataset.pivot_table(
                index="seed", columns="label", values=metric, aggfunc="first"
            )
            winners = by_seed.eq(by_seed.max(axis=1), axis=0) & by_seed.notna()
            first_metric_row = True
            for label in order:
                if label not in by_seed.columns:
                    continue
                values = by_seed[label].dropna().to_numpy(dtype=float)
                if values.size == 0:
                    continue
                mean = float(values.mean())
                std = float(values.std(ddof=1)) if values.size > 1 else math.nan
                cv = std / mean if mean else math.nan
                wins = int(winners[label].sum())
                cells = (
                    Cell(str(values.size)),
                    Cell(format_number(mean, digits)),
                    Cell(format_number(std, digits)),
                    Cell(format_number(float(values.min()), digits)),
                    Cell(format_number(float(values.max()), digits)),
                    Cell(format_number(cv, 3)),
                    Cell(f"{wins}/{values.size}"),
                )
                rows.append(
                    Row(
                        labels=(
                            dataset if i == 0 and first_metric_row else "",
                            metric if first_metric_row else "",
                            label,
                        ),
                        cells=cells,
                        new_block=first_metric_row and bool(rows),
                    )
                )
                records.append(
                    {
                        "dataset": dataset,
                        "metric": metric,
                        "method": label,
                        "n_seeds": int(values.size),
                        "mean": mean,
                        "std": std,
                        "min": float(values.min()),
                        "max": float(values.max()),
                        "cv": cv,
                        "wins": wins,
                    }
                )
                first_metric_row = False
    return Table(
        name="seeds",
        title="Robustness over seeds",
        description=(
            "Seed robustness: per method and metric the std, min, max and coefficient of variation over "
            "seeds, and on how many seeds the method is the best one."
        ),
        stub=("Dataset", "Metric", "Method"),
        columns=("Seeds", "Mean", "Std", "Min", "Max", "CV", "Wins"),
        rows=tuple(rows),
        notes=(
            "CV: std / mean. Wins: seeds on which the method has the best value of all methods (ties count for each).",
        ),
        data=pd.DataFrame(records),
    )


def dataset_table(results: StudyResults) -> Table | None:
    """Build the data set statistics table (users, items, interactions, density).

    Returns:
        The table, or ``None`` when no run's ``metrics.json`` has ``dataset_stats``.
    """
    if not results.dataset_stats:
        logger.info("no run records dataset_stats in metrics.json; the data set table is left out")
        return None
    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for dataset in results.datasets:
        record = results.dataset_stats.get(dataset)
        if record is None:
            logger.info(
                "no dataset_stats for data set %s; it is left out of the data set table", dataset
            )
            continue
        users = record.get("users", math.nan)
        items = record.get("items", math.nan)
        interactions = record.get("interactions", math.nan)
        density = record.get("density", math.nan)
        if math.isnan(density) and users > 0 and items > 0:
            density = interactions / (users * items)
        length = interactions / users if users > 0 else math.nan

        def count(value: float) -> str:
            return "–" if math.isnan(value) else f"{int(round(value)):,}"

        rows.append(
            Row(
                labels=(dataset,),
                cells=(
                    Cell(count(users)),
                    Cell(count(items)),
                    Cell(count(interactions)),
                    Cell("–" if math.isnan(length) else f"{length:.1f}"),
                    Cell("–" if math.isnan(density) else f"{density * 100:.4f}%"),
                ),
            )
        )
        records.append(
            {
                "dataset": dataset,
                "users": users,
                "items": items,
                "interactions": interactions,
                "avg_length": length,
                "density": density,
            }
        )
    return Table(
        name="datasets",
        title="Data set statistics after preprocessing",
        description="Data sets: users, items, interactions, mean sequence length and density.",
        stub=("Dataset",),
        columns=("Users", "Items", "Interactions", "Avg. length", "Density"),
        rows=tuple(rows),
        notes=("Density: interactions / (users x items).",),
        data=pd.DataFrame(records),
    )


def ablation_table(
    results: StudyResults, *, metrics: list[str], digits: int = 4, confidence: float = 0.95
) -> Table | None:
    """Build the ablation table: rows data set x metric x method, columns the factor values.

    Only methods whose runs carry the factor appear. The best value per row is bold.

    Returns:
        The table, or ``None`` when the study declares no ablation or no run carries its factor.
    """
    ablation = results.ablation
    if ablation is None:
        return None
    runs = results.runs[results.runs["variant"] != ""]
    if runs.empty:
        logger.info(
            "no run carries the ablation factor %s; the ablation table is left out", ablation.factor
        )
        return None
    # Order the values as the study declares them, then any others found in the runs.
    found = list(pd.unique(runs["factor_value"]))
    declared = [v for v in ablation.values if any(_same_value(v, f) for f in found)]
    values = declared + [f for f in found if not any(_same_value(f, d) for d in declared)]

    label_methods = dict(zip(results.runs["label"], results.runs["method"], strict=True))
    method_names = list(dict.fromkeys(label_methods[label] for _, label in method_order(results)))
    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for dataset in results.datasets:
        in_dataset = runs[runs["dataset"] == dataset]
        present = set(in_dataset["method"])
        for i, metric in enumerate(metrics):
            for j, method in enumerate(m for m in method_names if m in present):
                mine = in_dataset[in_dataset["method"] == method]
                summary = []
                counts = []
                for value in values:
                    picked = mine[[_same_value(value, v) for v in mine["factor_value"]]][metric]
                    summary.append(_spread(picked.to_numpy(dtype=float), "std", confidence))
                    counts.append(int(picked.notna().sum()))
                means = np.array([s[0] for s in summary])
                best, second = _rank_flags(means)
                cells = []
                for k, value in enumerate(values):
                    mean, std, low, high = summary[k]
                    cells.append(
                        Cell(
                            text=format_number(mean, digits),
                            spread="" if math.isnan(std) else format_number(std, digits),
                            bold=bool(best[k]),
                            underline=bool(second[k]),
                        )
                    )
                    records.append(
                        {
                            "dataset": dataset,
                            "metric": metric,
                            "method": method,
                            "factor": ablation.factor,
                            "value": value,
                            "n_seeds": counts[k],
                            "mean": mean,
                            "std": std,
                            "ci_low": low,
                            "ci_high": high,
                        }
                    )
                rows.append(
                    Row(
                        labels=(
                            dataset if i == 0 and j == 0 else "",
                            metric if j == 0 else "",
                            method,
                        ),
                        cells=tuple(cells),
                        new_block=j == 0 and bool(rows),
                    )
                )
    return Table(
        name="ablation",
        title=f"Ablation over {ablation.factor} (mean ± std over seeds)",
        description=f"Ablation: each metric as {ablation.factor} varies, per method; best value per row bold.",
        stub=("Dataset", "Metric", "Method"),
        columns=tuple(f"{ablation.short_name}={format_factor_value(v)}" for v in values),
        rows=tuple(rows),
        notes=("Bold: best value of the factor in the row; underlined: second best.",),
        data=pd.DataFrame(records),
    )


def _same_value(a: object, b: object) -> bool:
    """Compare factor values, treating numbers by value (``1`` equals ``1.0``)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def tuning_table(results: StudyResults) -> Table | None:
    """Build the table of tuned settings from ``tuning/best_params.json`` of a tune study.

    The file maps each tuned component (data set, backbone, strategy) to its
    best ``params``, validation ``value``, best ``trial`` and trial counts per
    state.

    Returns:
        The table, or ``None`` when the study has no readable best-parameter file.
    """
    path = results.study_dir / "tuning" / "best_params.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        components = content["components"]
        if not isinstance(components, dict):
            raise TypeError("'components' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read %s: %s; the tuning table is left out", path, exc)
        return None

    entries = [c for c in components.values() if isinstance(c, dict)]
    params = sorted({name for c in entries for name in (c.get("params") or {})})
    rows: list[Row] = []
    records: list[dict[str, object]] = []
    for entry in entries:
        method = f"{entry.get('backbone', '?')}+{entry.get('strategy', '?')}"
        value = entry.get("value")
        complete = (entry.get("trials") or {}).get("COMPLETE", 0)
        settings = entry.get("params") or {}
        cells = [
            Cell("–" if value is None else f"{float(value):.4g}"),
            Cell(str(entry.get("trial", "–"))),
            Cell(str(complete)),
            *(Cell(_format_setting(settings.get(name))) for name in params),
        ]
        rows.append(Row(labels=(str(entry.get("dataset", "?")), method), cells=tuple(cells)))
        records.append(
            {
                "dataset": entry.get("dataset"),
                "method": method,
                "best_value": value,
                "best_trial": entry.get("trial"),
                "complete_trials": complete,
                **{name: settings.get(name) for name in params},
            }
        )
    objective = content.get("objective", "validation metric")
    return Table(
        name="tuning",
        title=f"Tuned settings (best {objective} per method)",
        description="Tuning: the best settings Optuna found per data set and method, with the best validation value.",
        stub=("Dataset", "Method"),
        columns=("Best value", "Best trial", "Trials", *params),
        rows=tuple(rows),
        notes=(f"Best value: {objective} of the best trial. Trials: complete tuning trials.",),
        data=pd.DataFrame(records),
    )


def _format_setting(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
