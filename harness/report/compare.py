"""Significance of every method against the reference strategy on its backbone.

Each comparison pairs a method with the reference strategy on the same
backbone (and the same ablation variant when the reference has one) on one
data set and one metric, at two levels:

* ``per-user``: each user's value averaged over the seeds that the method
  and the reference both have, paired on the user id;
* ``per-seed``: each seed's test mean (from ``metrics.json``), paired on the seed.

Holm's correction runs over all comparisons of one level, separately for
each test: that family is every cell of the main table that carries a mark.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import asdict

import numpy as np
import pandas as pd

from harness import stats
from harness.report.collect import StudyResults, load_per_user

logger = logging.getLogger(__name__)

LEVELS = ("per-user", "per-seed")
TESTS = ("t", "wilcoxon", "randomization")
COMPARISON_COLUMNS = (
    "dataset",
    "metric",
    "method",
    "reference",
    "level",
    "n",
    "mean_method",
    "mean_reference",
    "mean_diff",
    "relative_diff",
    "ci_low",
    "ci_high",
    "t_statistic",
    "p_t",
    "p_t_holm",
    "p_wilcoxon",
    "p_wilcoxon_holm",
    "p_randomization",
    "p_randomization_holm",
    "permutations",
    "cohens_d",
)


def reference_label(runs: pd.DataFrame, label: str, reference: str) -> str | None:
    """Return the label of the reference-strategy runs that ``label`` is compared with.

    The reference shares the backbone and the ablation variant. When the
    reference strategy has no runs of that variant because it lacks the
    ablated option, its runs without a variant are used.

    Returns:
        The reference label, or ``None`` when the backbone has no reference runs
        or ``label`` is the reference itself.
    """
    row = runs.loc[runs["label"] == label].iloc[0]
    candidates = runs[(runs["backbone"] == row["backbone"]) & (runs["strategy"] == reference)]
    for variant in (row["variant"], ""):
        match = candidates.loc[candidates["variant"] == variant, "label"]
        if not match.empty:
            found = str(match.iloc[0])
            return None if found == label else found
    return None


def _comparison_rng(seed: int, key: str) -> np.random.Generator:
    """Derive one generator per comparison, so adding a method leaves the others' p-values unchanged."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _per_user_means(
    results: StudyResults, dataset: str, label: str, seeds: tuple[int, ...], metrics: list[str]
) -> pd.DataFrame:
    """Average each user's metrics over the given seeds of one (data set, label); index = user key."""
    runs = results.runs
    chosen = (runs["dataset"] == dataset) & (runs["label"] == label) & runs["seed"].isin(seeds)
    paths = list(runs.loc[chosen, "path"])
    values = load_per_user(paths, metrics)
    return values.groupby("user_key", sort=True)[metrics].mean()


def compare_methods(
    results: StudyResults,
    metrics: list[str],
    reference: str,
    *,
    seed: int,
    n_permutations: int = stats.DEFAULT_PERMUTATIONS,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Compare every method with the reference strategy on its backbone.

    Args:
        results: The study's finished runs.
        metrics: Metric names to compare (columns of ``results.runs``).
        reference: Reference strategy name, e.g. ``"argmax"``.
        seed: Seed of the randomization tests' generators.
        n_permutations: Sign vectors per randomization test.
        confidence: Level of the confidence intervals of the mean differences.

    Returns:
        One row per (data set, metric, method, level) with the columns in
        :data:`COMPARISON_COLUMNS`; Holm-adjusted p-values are computed per
        level and test over all rows. The frame is empty when no method has
        a run of the reference strategy on its backbone to compare with.
    """
    runs = results.runs
    rows: list[dict[str, object]] = []
    per_user_cache: dict[tuple[str, str, tuple[int, ...]], pd.DataFrame] = {}

    def per_user(dataset: str, label: str, seeds: tuple[int, ...]) -> pd.DataFrame:
        key = (dataset, label, seeds)
        if key not in per_user_cache:
            per_user_cache[key] = _per_user_means(results, dataset, label, seeds, metrics)
        return per_user_cache[key]

    for dataset in results.datasets:
        in_dataset = runs[runs["dataset"] == dataset]
        for label in pd.unique(in_dataset["label"]):
            ref = reference_label(in_dataset, label, reference)
            if ref is None:
                continue
            method_runs = in_dataset[in_dataset["label"] == label].set_index("seed")
            ref_runs = in_dataset[in_dataset["label"] == ref].set_index("seed")
            # Both sides average the same seeds, so a missing seed cannot bias the pairing.
            seeds = method_runs.index.intersection(ref_runs.index).sort_values()
            common = tuple(int(s) for s in seeds)
            users_a, users_b = per_user(dataset, label, common).align(
                per_user(dataset, ref, common), join="inner", axis=0
            )

            for metric in metrics:
                samples = {
                    "per-user": (users_a[metric].to_numpy(), users_b[metric].to_numpy()),
                    "per-seed": (
                        method_runs.loc[seeds, metric].to_numpy(dtype=float),
                        ref_runs.loc[seeds, metric].to_numpy(dtype=float),
                    ),
                }
                for level, (a, b) in samples.items():
                    keep = ~(np.isnan(a) | np.isnan(b))
                    key = f"{dataset}|{metric}|{label}|{level}"
                    result = stats.compare_paired(
                        a[keep],
                        b[keep],
                        rng=_comparison_rng(seed, key),
                        n_permutations=n_permutations,
                        confidence=confidence,
                    )
                    record = asdict(result)
                    record["mean_method"] = record.pop("mean_a")
                    record["mean_reference"] = record.pop("mean_b")
                    mean_ref = record["mean_reference"]
                    record["relative_diff"] = record["mean_diff"] / mean_ref if mean_ref else np.nan
                    rows.append(
                        {
                            "dataset": dataset,
                            "metric": metric,
                            "method": label,
                            "reference": ref,
                            "level": level,
                        }
                        | record
                    )

    table = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if not c.endswith("_holm")])
    for test in TESTS:
        column = f"p_{test}"
        adjusted = np.full(len(table), np.nan)
        for level in LEVELS:
            mask = (table["level"] == level).to_numpy()
            adjusted[mask] = stats.holm(table.loc[mask, column].to_numpy(dtype=float))
        table[f"{column}_holm"] = adjusted
    return table.reindex(columns=list(COMPARISON_COLUMNS))
