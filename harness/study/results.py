"""The end-of-study table: test Recall@20 and nDCG@20 per cell, mean and spread over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness import runs
from harness.study.spec import RUNS_FOLDER, Cell

METRICS = ("recall@20", "ndcg@20")


def collect(directory: Path, cells: Sequence[Cell]) -> pd.DataFrame:
    """Read every cell's run folder into one row.

    Returns:
        One row per cell: ``run_id``, ``dataset``, ``backbone``, ``strategy``,
        ``method``, ``seed``, ``value`` (ablation), ``status`` (``finished``,
        ``failed`` or ``missing``) and the test metrics in :data:`METRICS`
        (NaN unless finished).
    """
    rows = []
    for cell in cells:
        folder = directory / RUNS_FOLDER / cell.run_id
        metrics = runs.read_metrics(folder)
        if metrics is not None and metrics.get("status") == runs.FINISHED:
            status = "finished"
        elif runs.read_error(folder) is not None:
            status = "failed"
        else:
            status = "missing"
        test = (metrics or {}).get("test") or {}
        row = {**cell.to_dict(), "value": cell.value, "status": status}
        for metric in METRICS:
            value = test.get(metric)
            row[metric] = (
                float(value) if status == "finished" and isinstance(value, (int, float)) else np.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Average the finished runs of each cell over seeds.

    Returns:
        One row per data set, method and ablation value (in first-seen order)
        with ``runs`` (finished), ``failed``, and ``<metric>_mean`` /
        ``<metric>_std`` (sample standard deviation; NaN with one seed).
    """
    keys = ["dataset", "method", "value"]
    frame = frame.assign(value=frame["value"].astype(object).where(frame["value"].notna(), ""))
    grouped = frame.groupby(keys, sort=False, dropna=False)
    summary = grouped.agg(
        runs=("status", lambda status: int((status == "finished").sum())),
        failed=("status", lambda status: int((status == "failed").sum())),
        **{f"{metric}_mean": (metric, "mean") for metric in METRICS},
        **{f"{metric}_std": (metric, "std") for metric in METRICS},
    )
    return summary.reset_index()
