"""Summary statistics of a prepared data set, for `harness data stats` and report tables."""

from __future__ import annotations

import numpy as np

from harness.data.types import Sequences

LENGTH_QUANTILES = {"length_p25": 0.25, "length_p50": 0.50, "length_p75": 0.75, "length_p90": 0.90}


def dataset_stats(seqs: Sequences) -> dict[str, str | int | float]:
    """Count users, items and interactions and summarise sequence lengths.

    Args:
        seqs: A prepared data set.

    Returns:
        A flat, JSON-serialisable dict with ``name``, ``users``, ``items``
        (the catalogue size ``n_items``), ``interactions``, ``density``
        (interactions / (users * items)) and the sequence-length summary
        ``length_min``, ``length_p25``, ``length_p50``, ``length_p75``,
        ``length_p90``, ``length_max`` and ``length_mean``. Quantiles use
        linear interpolation between order statistics (numpy's default).
        Length entries are NaN for a data set without users.
    """
    lengths = seqs.seqs.lengths
    users, items, interactions = seqs.n_users, seqs.n_items, seqs.n_interactions
    cells = users * items
    stats: dict[str, str | int | float] = {
        "name": seqs.name,
        "users": users,
        "items": items,
        "interactions": interactions,
        "density": interactions / cells if cells else float("nan"),
    }
    if len(lengths) == 0:
        for key in ("length_min", *LENGTH_QUANTILES, "length_max", "length_mean"):
            stats[key] = float("nan")
        return stats

    stats["length_min"] = int(lengths.min())
    quantiles = np.quantile(lengths, list(LENGTH_QUANTILES.values()))
    stats.update(
        {key: float(value) for key, value in zip(LENGTH_QUANTILES, quantiles, strict=True)}
    )
    stats["length_max"] = int(lengths.max())
    stats["length_mean"] = float(lengths.mean())
    return stats
