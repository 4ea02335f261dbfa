"""The `harness data` commands: `harness data stats`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from harness.config import DataConfig
from harness.data.load import load_dataset
from harness.data.stats import dataset_stats

data_app = typer.Typer(
    help="Inspect interaction data sets.",
    no_args_is_help=True,
    add_completion=False,
)

_LABELS = {
    "name": "data set",
    "users": "users",
    "items": "items",
    "interactions": "interactions",
    "density": "density",
    "length_min": "length min",
    "length_p25": "length 25%",
    "length_p50": "length median",
    "length_p75": "length 75%",
    "length_p90": "length 90%",
    "length_max": "length max",
    "length_mean": "length mean",
}


@data_app.command("stats")
def stats(
    dataset: str = typer.Argument(
        ..., help="Interaction file to read, or 'synthetic' for the built-in planted-interest data."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print one JSON object instead of a table."
    ),
    format_name: str | None = typer.Option(
        None,
        "--format",
        help="Reader name (see `harness list`); detected from the file when omitted.",
    ),
    user_col: str | None = typer.Option(
        None, "--user-col", help="User id column (csv, tsv, parquet, recbole)."
    ),
    item_col: str | None = typer.Option(
        None, "--item-col", help="Item id column (csv, tsv, parquet, recbole)."
    ),
    time_col: str | None = typer.Option(
        None,
        "--time-col",
        help="Time column, numbers or ISO 8601 dates (csv, tsv, parquet, recbole).",
    ),
    rating_col: str | None = typer.Option(
        None, "--rating-col", help="Rating column (csv, tsv, parquet, recbole)."
    ),
    min_rating: float | None = typer.Option(
        None, "--min-rating", help="Keep only interactions rated at least this value."
    ),
    k_core: int = typer.Option(
        0,
        "--k-core",
        help="Drop users and items with fewer than K interactions, repeatedly (0: off).",
    ),
    synthetic_seed: int = typer.Option(
        0, "--synthetic-seed", help="Seed of the synthetic generator."
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Cache folder (default: $HARNESS_CACHE_DIR or ~/.cache/mi-harness).",
    ),
) -> None:
    """Print users, items, interactions, density and sequence lengths of a data set."""
    config = DataConfig(
        source=dataset,
        format=format_name,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        min_rating=min_rating,
        k_core=k_core,
        synthetic_seed=synthetic_seed,
    )
    summary = dataset_stats(load_dataset(config, cache_dir=cache_dir))
    if json_output:
        # NaN is not valid JSON; an empty data set reports its lengths as null.
        clean = {
            key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in summary.items()
        }
        typer.echo(json.dumps(clean))
        return
    typer.echo(format_table(summary))


def format_table(summary: dict[str, str | int | float]) -> str:
    """Render a stats dict as aligned ``label  value`` lines."""
    width = max(len(label) for label in _LABELS.values())
    lines = []
    for key, value in summary.items():
        label = _LABELS.get(key, key)
        if isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:.3g}" if key == "density" else f"{value:,.1f}"
        else:
            text = str(value)
        lines.append(f"{label:<{width}}  {text}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the app."""
    app.add_typer(data_app, name="data")
