"""The one entry point from a :class:`~harness.config.DataConfig` to prepared sequences."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from harness.config import DataConfig
from harness.data import cache
from harness.data.preprocess import PreprocessOptions, prepare
from harness.data.readers import ColumnNames, check_readable, read_interactions, resolve_format
from harness.data.types import Sequences
from harness.errors import ConfigError

logger = logging.getLogger(__name__)


def load_dataset(config: DataConfig, cache_dir: Path | None = None) -> Sequences:
    """Read, prepare and cache the data set that ``config`` names.

    A file is read with ``config.format`` (or the detected format), then
    filtered and sorted as :mod:`harness.data.preprocess` describes. The
    result is cached under ``cache_dir`` (default: see
    :func:`harness.data.cache.default_cache_dir`), keyed by the file's bytes
    and the settings, so a second load skips parsing. ``"synthetic"`` calls
    the planted-interest generator with ``config.synthetic_seed`` instead and
    is not cached.

    Args:
        config: Source, format, column names, rating threshold and k-core.
        cache_dir: Cache folder overriding ``$HARNESS_CACHE_DIR`` and the default.

    Returns:
        The prepared sequences, named ``config.name``.

    Raises:
        DataError: The file is missing, unreadable or malformed; the message
            names the file, line or column and the fix.
        ConfigError: An unknown format, column names for a format with fixed
            columns, or filters requested for synthetic data.
    """
    if config.source == "synthetic":
        return _synthetic(config)

    path = Path(config.source).expanduser()
    check_readable(path)
    columns = ColumnNames.from_config(config)
    format_name = resolve_format(path, config.format, columns)
    options = PreprocessOptions(min_rating=config.min_rating, k_core=config.k_core)

    settings = {
        "format": format_name,
        "columns": columns.given(),
        "min_rating": options.min_rating,
        "k_core": options.k_core,
    }
    directory = cache.default_cache_dir(cache_dir)
    key = cache.cache_key(path, settings)
    cached = cache.read_entry(directory, key, config.name)
    if cached is not None:
        return cached

    raw = read_interactions(path, format_name, columns)
    seqs = prepare(raw, options, config.name)
    logger.info(
        "prepared %s: %d users, %d items, %d interactions",
        seqs.name,
        seqs.n_users,
        seqs.n_items,
        seqs.n_interactions,
    )
    cache.write_entry(directory, key, seqs, path)
    return seqs


def _synthetic(config: DataConfig) -> Sequences:
    # Filtering would renumber items and users, and the generator's ground
    # truth (item topics, user interest weights) is indexed by those ids.
    if config.min_rating is not None:
        raise ConfigError("synthetic data has no ratings; drop --min-rating")
    if config.k_core > 0:
        raise ConfigError("k-core filtering would break the synthetic ground truth; drop --k-core")

    from harness.data.synthetic import generate

    seqs = generate(seed=config.synthetic_seed)
    return dataclasses.replace(seqs, name=config.name)
