"""The `harness report` command."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.errors import ConfigError


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def report(
    study_dir: Path = typer.Argument(
        ..., help="Study folder written by `harness study` (contains runs/)."
    ),
    reference: str | None = typer.Option(
        None,
        help="Strategy each method is compared with on its backbone. "
        "Default: argmax when the study has argmax runs, else no significance marks.",
    ),
    metric: str = typer.Option(
        "ndcg@10,ndcg@20,recall@10,recall@20", help="Comma-separated test metrics for the tables."
    ),
    alpha: float = typer.Option(0.05, help="Significance level after Holm's correction."),
    formats: str = typer.Option(
        "latex,markdown,csv",
        "--format",
        help="Comma-separated table formats: latex, markdown, csv.",
    ),
    output: Path | None = typer.Option(None, help="Output folder (default: STUDY_DIR/report)."),
    test: str = typer.Option(
        "t", help="Test that sets the significance marks: t, wilcoxon or randomization."
    ),
    level: str = typer.Option(
        "per-user", help="Pairing of that test: per-user (users averaged over seeds) or per-seed."
    ),
    spread: str = typer.Option(
        "std", help="Shown after ± in the main table: std over seeds or ci half-width."
    ),
    permutations: int = typer.Option(
        10_000, help="Sign flips per randomization test (all of them when 2^n is fewer)."
    ),
    seed: int = typer.Option(
        0, help="Seed of the randomization tests and the heat-map user sample."
    ),
    digits: int = typer.Option(4, help="Decimals of metric values."),
    heatmap_users: int = typer.Option(100, help="Users shown per interest-share heat-map."),
    figures: bool = typer.Option(
        True, "--figures/--no-figures", help="Draw figures (PNG and PDF)."
    ),
) -> None:
    """Build tables, significance tests and figures from a study's run files (no training)."""
    from harness.report import ReportOptions, build_report
    from harness.report.text import count_noun

    options = ReportOptions(
        reference=reference,
        metrics=_split(metric),
        alpha=alpha,
        test=test,  # type: ignore[arg-type]
        level=level,  # type: ignore[arg-type]
        spread=spread,  # type: ignore[arg-type]
        digits=digits,
        permutations=permutations,
        seed=seed,
        formats=_split(formats),  # type: ignore[arg-type]
        figures=figures,
        heatmap_users=heatmap_users,
    )
    if not study_dir.exists():
        raise ConfigError(
            f"study folder {study_dir} not found; pass a folder written by `harness study`"
        )
    target = output if output is not None else study_dir / "report"
    result = build_report(study_dir, options, target)
    missing = len(result.results.missing)
    print(f"report written to {target / 'index.md'}")
    if missing:
        verb = "has" if missing == 1 else "have"
        print(f"{count_noun(missing, 'cell')} {verb} no finished run; see {target / 'index.md'}")


def register(app: typer.Typer) -> None:
    """Add the `report` command to the app."""
    app.command(name="report")(report)
