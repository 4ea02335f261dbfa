"""Build a study's report: a :class:`Report` of data frames first, then files.

:func:`make_report` reads nothing but the study's run files and computes
every table and comparison; :func:`write_report` renders them as LaTeX,
Markdown and CSV, draws the figures and writes ``index.md``, which links
each output with one line on what it shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from harness import plots, stats
from harness.config import check_choice
from harness.errors import ConfigError, unknown_choice
from harness.report import render
from harness.report.collect import MISSING_COLUMNS, StudyResults, load_study
from harness.report.compare import COMPARISON_COLUMNS, compare_methods
from harness.report.tables import (
    Table,
    ablation_table,
    balance_table,
    dataset_table,
    main_table,
    method_order,
    seed_table,
    tuning_table,
)
from harness.report.text import count_noun

logger = logging.getLogger(__name__)

TestName = Literal["t", "wilcoxon", "randomization"]
LevelName = Literal["per-user", "per-seed"]
SpreadName = Literal["std", "ci"]
FormatName = Literal["latex", "markdown", "csv"]
DEFAULT_METRICS = ("ndcg@10", "ndcg@20", "recall@10", "recall@20")
DEFAULT_REFERENCE = "argmax"
_SUFFIX = {"latex": "tex", "markdown": "md", "csv": "csv"}


@dataclass(frozen=True)
class ReportOptions:
    """Options of a report: the reference, metrics, test, output formats and figures.

    Attributes:
        reference: Strategy every method is compared with on its backbone.
            ``None`` (the default) picks argmax when the study has argmax
            runs; otherwise the report has no significance marks.
        metrics: Test metrics in the main, seed and ablation tables; the first
            one is the metric of the per-seed figure.
        alpha: Significance level of the marks, after Holm's correction.
        test: Test whose adjusted p-value sets the marks.
        level: Pairing of that test: users (averaged over seeds) or seeds.
        spread: What follows the plus-minus sign in the main table: the
            standard deviation over seeds or the half-width of the CI.
        confidence: Level of every confidence interval.
        digits: Decimals of metric values.
        permutations: Sign vectors per randomization test.
        seed: Seed of the randomization tests and the heat-map user sample.
        formats: Table formats to write.
        figures: Whether to draw figures.
        heatmap_users: Users per interest-share heat-map.
    """

    reference: str | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    alpha: float = 0.05
    test: TestName = "t"
    level: LevelName = "per-user"
    spread: SpreadName = "std"
    confidence: float = 0.95
    digits: int = 4
    permutations: int = stats.DEFAULT_PERMUTATIONS
    seed: int = 0
    formats: tuple[FormatName, ...] = ("latex", "markdown", "csv")
    figures: bool = True
    heatmap_users: int = 100

    def __post_init__(self) -> None:
        check_choice("test", self.test, TestName)
        check_choice("level", self.level, LevelName)
        check_choice("spread", self.spread, SpreadName)
        for name in self.formats:
            check_choice("format", name, FormatName)
        if not self.formats:
            raise ConfigError("no table format given; use --format with latex, markdown or csv")
        if not self.metrics:
            raise ConfigError("no metric given; use --metric, e.g. --metric ndcg@20,recall@20")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"invalid alpha={self.alpha}: must be between 0 and 1")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"invalid confidence={self.confidence}: must be between 0 and 1")
        if self.digits < 0:
            raise ConfigError(f"invalid digits={self.digits}: must be >= 0")
        if self.permutations < 1:
            raise ConfigError(f"invalid permutations={self.permutations}: must be >= 1")
        if self.heatmap_users < 1:
            raise ConfigError(f"invalid heatmap_users={self.heatmap_users}: must be >= 1")


@dataclass(frozen=True)
class Report:
    """Everything a report shows, as data.

    Attributes:
        results: The study's finished runs and missing cells.
        options: The options the report was made with.
        reference: The strategy the comparisons use: ``options.reference``,
            or its default; ``None`` when the report has no significance marks.
        tables: Tables in output order (main first).
        comparisons: Every significance comparison (the rows of ``stats.csv``).
        notes: Sentences for ``index.md`` about what was left out.
    """

    results: StudyResults
    options: ReportOptions
    reference: str | None
    tables: tuple[Table, ...]
    comparisons: pd.DataFrame
    notes: tuple[str, ...]

    def table(self, name: str) -> Table:
        """Return the table with the given name."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)


def _choose_reference(results: StudyResults, requested: str | None) -> tuple[str | None, str]:
    """Pick the reference strategy of a report.

    Args:
        results: The study's finished runs.
        requested: The reference the user passed, or ``None`` for the default.

    Returns:
        A pair: the reference, and a note for ``index.md`` that is empty when
        the default applies. The reference is ``None`` when the user passed
        none and the study has no runs of the default.

    Raises:
        ConfigError: If the user passed a strategy that has no runs in the study.
    """
    present = ", ".join(results.strategies)
    if requested is not None:
        if requested not in results.strategies:
            raise ConfigError(
                f"this study has no runs of strategy {requested!r}; "
                f"pass --reference with one of: {present}"
            )
        return requested, ""
    if DEFAULT_REFERENCE in results.strategies:
        return DEFAULT_REFERENCE, ""

    if results.ablation is not None:
        # An ablation compares the values of its factor, which the ablation
        # table and figure show, so a missing reference is no loss here.
        logger.info(
            "the ablation study %s has no %s runs, so the main table has no significance marks",
            results.study_dir,
            DEFAULT_REFERENCE,
        )
        return None, (
            f"The study has no {DEFAULT_REFERENCE} runs, the default reference, so the main "
            "table has no significance marks. The ablation table and figure compare the "
            f"values of {results.ablation.factor}."
        )
    logger.warning(
        "%s has no %s runs, the default reference, so the report has no significance marks. "
        "To add them, pass --reference with one of: %s",
        results.study_dir,
        DEFAULT_REFERENCE,
        present,
    )
    return None, (
        f"The study has no {DEFAULT_REFERENCE} runs, the default reference, so the tables have "
        f"no significance marks. To compare every method with another strategy on its backbone, "
        f"run `harness report` again with --reference and one of: {present}."
    )


def _untested_note(results: StudyResults, comparisons: pd.DataFrame, reference: str) -> str:
    """Name the methods that have no reference run to be compared with, or return ``""``."""
    runs = results.runs
    reference_labels = set(runs.loc[runs["strategy"] == reference, "label"])
    untested = [
        label
        for _, label in method_order(results)
        if label not in set(comparisons["method"]) and label not in reference_labels
    ]
    if not untested:
        return ""
    return (
        f"No {reference} run on the same backbone, so no significance test for: "
        + ", ".join(untested)
        + "."
    )


def make_report(results: StudyResults, options: ReportOptions) -> Report:
    """Compute every table and comparison of a report.

    Raises:
        ConfigError: If the reference strategy the user passed or a metric is
            not in the study; the message lists those that are.
    """
    reference, reference_note = _choose_reference(results, options.reference)
    for metric in options.metrics:
        if metric not in results.metrics:
            raise unknown_choice("metric", metric, results.metrics)
    metrics = list(options.metrics)

    notes: list[str] = [reference_note] if reference_note else []
    if reference is None:
        comparisons = pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    else:
        comparisons = compare_methods(
            results,
            metrics,
            reference,
            seed=options.seed,
            n_permutations=options.permutations,
            confidence=options.confidence,
        )
        if comparisons.empty:
            # In an ablation of one strategy nothing else is on the backbone,
            # so an empty comparison is expected there.
            level = logging.INFO if results.ablation is not None else logging.WARNING
            logger.log(level, "no method has a %r run on its backbone to compare with", reference)
        untested = _untested_note(results, comparisons, reference)
        if untested:
            notes.append(untested)

    tables: list[Table] = [
        main_table(
            results,
            comparisons,
            metrics=metrics,
            reference=reference,
            alpha=options.alpha,
            test=options.test,
            level=options.level,
            spread=options.spread,
            digits=options.digits,
            confidence=options.confidence,
        )
    ]
    optional = {
        "balance": balance_table(results),
        "datasets": dataset_table(results),
        "tuning": tuning_table(results),
        "ablation": ablation_table(
            results, metrics=metrics, digits=options.digits, confidence=options.confidence
        ),
    }
    tables.append(seed_table(results, metrics=metrics, digits=options.digits))
    for name, table in optional.items():
        if table is not None:
            tables.append(table)
        elif name == "datasets":
            notes.append(
                "No run records dataset_stats in metrics.json, so there is no data set table."
            )
        elif name == "balance":
            notes.append("No run records balance metrics, so there is no balance table.")
    return Report(
        results=results,
        options=options,
        reference=reference,
        tables=tuple(tables),
        comparisons=comparisons,
        notes=tuple(notes),
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _draw_figures(report: Report, folder: Path) -> list[plots.Figure]:
    results = report.results
    options = report.options
    order = [label for _, label in method_order(results)]
    figures: list[plots.Figure] = []
    figures += plots.interest_heatmaps(
        results, folder, order, n_users=options.heatmap_users, seed=options.seed
    )
    figures += plots.entropy_plot(results, folder, order)
    figures += plots.seed_plot(results, folder, options.metrics[0], order)
    figures += plots.learning_curves(results, folder, order)
    if results.ablation is not None:
        for table in report.tables:
            if table.name == "ablation":
                flat = results.runs[results.runs["variant"] == ""]
                baselines = (
                    flat.melt(
                        id_vars=["dataset", "label"],
                        value_vars=list(options.metrics),
                        var_name="metric",
                    )
                    .groupby(["dataset", "label", "metric"], as_index=False)["value"]
                    .mean()
                    .rename(columns={"label": "method", "value": "mean"})
                )
                figures += plots.ablation_plot(
                    table.data, folder, results.ablation.factor, baselines
                )
    figures += plots.optuna_plots(results.study_dir, results.spec, folder)
    return figures


def _index(
    report: Report, output: Path, table_files: dict[str, list[Path]], figures: list[plots.Figure]
) -> str:
    """Write the text of index.md: one line per table, figure and data file."""
    results = report.results
    options = report.options

    def link(path: Path) -> str:
        relative = path.relative_to(output).as_posix()
        return f"[{path.suffix.lstrip('.')}]({relative})"

    counts = ", ".join(
        [
            count_noun(len(results.datasets), "data set"),
            count_noun(results.runs["label"].nunique(), "method"),
            count_noun(results.runs["seed"].nunique(), "seed"),
        ]
    )
    if report.reference is None:
        marks = "Reference strategy: none, so there are no significance marks (see Notes)."
    else:
        marks = (
            f"Reference strategy: {report.reference}; marks: {options.test} test on "
            f"{options.level} values, Holm-corrected, alpha = {options.alpha:g}."
        )
    lines = [
        f"# Report: {results.study_dir.name}",
        "",
        f"Built from {count_noun(len(results.runs), 'finished run')} in `{results.study_dir}` "
        f"({counts}). {marks}",
        "",
        "## Tables",
        "",
    ]
    for table in report.tables:
        links = " ".join(link(p) for p in table_files.get(table.name, []))
        lines.append(f"- **{table.title}** ({links}): {table.description}")
    extra = table_files.get("_extra", [])
    for path in extra:
        if path.name == "tables.tex":
            lines.append(
                f"- [tables.tex]({path.relative_to(output).as_posix()}): every LaTeX table in one document that compiles with pdflatex."
            )
        elif path.name == "stats.csv" and report.comparisons.empty:
            lines.append(
                f"- [stats.csv]({path.relative_to(output).as_posix()}): only a header, because no "
                "method was compared with a reference."
            )
        elif path.name == "stats.csv":
            lines.append(
                f"- [stats.csv]({path.relative_to(output).as_posix()}): every comparison with the reference "
                "(per-user and per-seed): n, mean difference with its CI, raw and Holm-corrected p-values of the "
                "t, Wilcoxon and randomization tests, Cohen's d."
            )
        elif path.name == "missing.csv":
            lines.append(
                f"- [missing.csv]({path.relative_to(output).as_posix()}): cells without a finished run."
            )

    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            links = " ".join(link(p) for p in figure.files)
            lines.append(f"- **{figure.stem}** ({links}): {figure.description}")
    tuning = results.study_dir / "tuning"
    if tuning.is_dir():
        files = sorted(p for p in tuning.iterdir() if p.is_file())
        if files:
            lines += ["", "## Tuning files", ""]
            lines += [f"- `{p}`" for p in files]

    missing = results.missing
    lines += ["", "## Missing or failed cells", ""]
    if missing.empty:
        lines.append("None: every expected (data set, method, seed) cell has a finished run.")
    else:
        verb = "has" if len(missing) == 1 else "have"
        lines.append(
            f"{count_noun(len(missing), 'cell')} {verb} no finished run; "
            "comparisons and tables use the runs that exist."
        )
        lines += [
            "",
            "| " + " | ".join(MISSING_COLUMNS) + " |",
            "|" + "|".join(["---"] * len(MISSING_COLUMNS)) + "|",
        ]
        for row in missing.itertuples(index=False):
            values = ["" if pd.isna(v) else str(v).replace("|", r"\|") for v in row]
            lines.append("| " + " | ".join(values) + " |")
    if results.warnings or report.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {text}" for text in (*results.warnings, *report.notes)]
    return "\n".join(lines) + "\n"


def write_report(report: Report, output: Path) -> Path:
    """Write the report's tables, statistics, figures and ``index.md`` under ``output``.

    Layout: ``tables/<name>.{tex,md,csv}``, ``tables/tables.tex`` (a
    document that compiles with pdflatex), ``stats.csv``, ``missing.csv``
    (only for a partial study), ``figures/<name>.{png,pdf}`` and ``index.md``.

    Returns:
        The path of ``index.md``.
    """
    output = Path(output)
    tables_dir = output / "tables"
    table_files: dict[str, list[Path]] = {}
    for table in report.tables:
        for fmt in report.options.formats:
            path = tables_dir / f"{table.name}.{_SUFFIX[fmt]}"
            text = {"latex": render.to_latex, "markdown": render.to_markdown, "csv": render.to_csv}[
                fmt
            ](table)
            table_files.setdefault(table.name, []).append(_write(path, text))

    extra: list[Path] = []
    if "latex" in report.options.formats:
        names = [f"{t.name}.tex" for t in report.tables]
        title = f"Report: {report.results.study_dir.name}"
        extra.append(_write(tables_dir / "tables.tex", render.latex_document(names, title)))
    extra.append(_write(output / "stats.csv", report.comparisons.to_csv(index=False)))
    if not report.results.missing.empty:
        extra.append(_write(output / "missing.csv", report.results.missing.to_csv(index=False)))
    table_files["_extra"] = extra

    figures = _draw_figures(report, output / "figures") if report.options.figures else []
    index = _write(output / "index.md", _index(report, output, table_files, figures))
    logger.info("wrote the report of %s to %s", report.results.study_dir, output)
    return index


def build_report(study_dir: Path, options: ReportOptions, output: Path | None = None) -> Report:
    """Read a study folder, compute its report and write it.

    Args:
        study_dir: The study folder (with ``runs/``).
        options: Report options.
        output: Output folder; defaults to ``study_dir/report``.

    Returns:
        The report that was written.
    """
    study_dir = Path(study_dir)
    results = load_study(study_dir)
    report = make_report(results, options)
    write_report(report, output if output is not None else study_dir / "report")
    return report
