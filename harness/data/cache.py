"""On-disk cache of prepared sequences.

An entry is one ``.npz`` file named by a key that hashes the source file's
bytes together with every setting that changes the prepared arrays (format,
column names, rating threshold, k-core, and :data:`CACHE_VERSION`). Editing
the file or changing a setting therefore gives a new key; stale entries are
never reused, only left behind. Entries are written to a temporary name and
renamed, so an interrupted write leaves no half-written entry under the real
name. An entry that cannot be read or fails its consistency checks is logged
and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from harness.data.types import Ragged, Sequences

logger = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_CACHE_DIR"
"""Environment variable that overrides the default cache folder."""

CACHE_VERSION = 1
"""Bumped whenever readers or preprocessing change what they produce for the same input."""

_CHUNK_BYTES = 1 << 20


def default_cache_dir(override: Path | None = None) -> Path:
    """Return the cache folder: ``override``, else ``$HARNESS_CACHE_DIR``, else ``~/.cache/mi-harness``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mi-harness"


def file_digest(path: Path) -> str:
    """Return the BLAKE2b hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=20)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(path: Path, settings: Mapping[str, object]) -> str:
    """Return the key of a prepared data set: a hash of the file's bytes and the settings.

    Args:
        path: The source file.
        settings: JSON-serialisable settings that change the prepared arrays.

    Returns:
        A 32-hex-digit key, usable as a file name.
    """
    payload = json.dumps(
        {"version": CACHE_VERSION, "content": file_digest(path), "settings": dict(settings)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def entry_path(directory: Path, key: str) -> Path:
    """Return the path of the entry ``key``."""
    return directory / f"{key}.npz"


def read_entry(directory: Path, key: str, name: str) -> Sequences | None:
    """Load a cached data set, or return ``None`` when there is no usable entry.

    A corrupt or inconsistent entry is logged as a warning and reported as
    missing, so the caller rebuilds and overwrites it.
    """
    path = entry_path(directory, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            offsets = entry["offsets"]
            values = entry["values"]
            user_ids = entry["user_ids"]
            item_ids = entry["item_ids"]
        problem = _consistency_problem(offsets, values, user_ids, item_ids)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        logger.warning("ignoring corrupt cache entry %s (%s); rebuilding it", path, problem)
        return None
    logger.info("loaded %s from cache entry %s", name, path)
    return Sequences(name=name, seqs=Ragged(offsets, values), user_ids=user_ids, item_ids=item_ids)


def _consistency_problem(
    offsets: np.ndarray, values: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray
) -> str | None:
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0:
        return "offsets must start at 0"
    if np.any(np.diff(offsets) < 0) or offsets[-1] != len(values):
        return "offsets do not match the values"
    if len(user_ids) != len(offsets) - 1:
        return "user id count does not match the rows"
    if len(values) and (values.min() < 1 or values.max() >= len(item_ids)):
        return "item ids out of range"
    return None


def write_entry(directory: Path, key: str, seqs: Sequences, source: Path) -> Path | None:
    """Store a prepared data set; return its path, or ``None`` when the folder is not writable.

    A cache that cannot be written only costs time, so the failure is logged
    as a warning and the caller carries on.
    """
    path = entry_path(directory, key)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".npz")
    except OSError as exc:
        logger.warning("cannot write cache entry %s (%s); continuing without the cache", path, exc)
        return None
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                offsets=seqs.seqs.offsets,
                values=seqs.seqs.values,
                user_ids=np.asarray(seqs.user_ids, dtype=str),
                item_ids=np.asarray(seqs.item_ids, dtype=str),
                source=np.array(str(source)),
            )
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        logger.warning("cannot write cache entry %s (%s); continuing without the cache", path, exc)
        return None
    logger.info("cached %s as %s", seqs.name, path)
    return path
