"""Run folder layout: atomic writes and reads of the files every run leaves behind.

A run writes ``<output>/<study>/runs/<run_id>/`` with ``config.json``,
``metrics.json``, ``per_user.parquet``, ``curve.csv`` and ``log.txt`` (and
``error.json`` when it failed). Every file is written under a temporary name
in the same folder and then renamed with :func:`os.replace`, which is atomic
on POSIX and Windows, so a crash never leaves a half-written file behind. A
run is finished exactly when ``metrics.json`` exists with ``"status":
"finished"``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import harness
from harness.config import RunConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PER_USER_FILE = "per_user.parquet"
CURVE_FILE = "curve.csv"
LOG_FILE = "log.txt"
ERROR_FILE = "error.json"

FINISHED = "finished"

# Distributions whose versions go into config.json; "python" and "harness" are added separately.
VERSIONED_PACKAGES = ("torch", "numpy", "pandas", "optuna", "scipy")

# Loggers of the three import packages; their records go to a run's log.txt.
RUN_LOGGERS = ("harness", "backbones", "strategies")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_GIT_TIMEOUT_S = 10.0


def run_dir(output: Path | str, study: str, run_id: str) -> Path:
    """Return the folder of one run: ``<output>/<study>/runs/<run_id>``."""
    return Path(output) / study / "runs" / run_id


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary path next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must be on the same file system for os.replace to be atomic. It is
    # created by the writer itself (not mkstemp, whose mode is 0600), so it gets the umask's
    # permissions. The process id and a random suffix keep concurrent writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats with None and numpy scalars with Python ones, recursively.

    JSON has no NaN or infinity; Python's ``json`` would write the non-standard
    tokens ``NaN`` and ``Infinity``, which other JSON readers reject.
    """
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented, standard JSON atomically (NaN and infinity become null)."""
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    write_text(path, text)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV without its index, atomically."""
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as Parquet (pyarrow) without its index, atomically."""
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False, engine="pyarrow"))


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object in ``path``, or None when the file is missing or not a JSON object.

    A file that exists but cannot be parsed is logged as a warning, since
    atomic writes mean it was edited or damaged outside the harness.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        logger.warning(
            "ignoring %s: invalid JSON at line %d column %d", path, exc.lineno, exc.colno
        )
        return None
    if not isinstance(data, dict):
        logger.warning("ignoring %s: expected a JSON object, found %s", path, type(data).__name__)
        return None
    return data


def package_versions() -> dict[str, str | None]:
    """Return the installed versions of python, harness and the main dependencies (None if absent)."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "harness": harness.__version__,
    }
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit(source: Path | None = None) -> str | None:
    """Return the commit of the harness source checkout, with ``-dirty`` if tracked files changed.

    Args:
        source: Root of the checkout; defaults to the folder above the
            ``harness`` package. The commit is only reported when this folder
            is the top level of a git work tree, so an installed copy inside
            some other repository does not report that repository's commit.

    Returns:
        The 40-hex commit, the commit plus ``-dirty``, or None when git is
        missing, fails, or the folder is not a checkout. Git failures give
        None instead of an exception, so provenance never stops a run.
    """
    root = Path(source) if source is not None else Path(harness.__file__).resolve().parent.parent
    if not root.is_dir():
        return None
    toplevel = _git(["rev-parse", "--show-toplevel"], root)
    if toplevel is None or Path(toplevel).resolve() != root.resolve():
        return None
    commit = _git(["rev-parse", "HEAD"], root)
    if not commit:
        return None
    # --no-optional-locks keeps `git status` from refreshing the index, so this
    # read never competes with a concurrent git command for index.lock.
    status = _git(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], root)
    if status is None:
        return commit
    return f"{commit}-dirty" if status else commit


def write_config(
    directory: Path,
    config: RunConfig,
    *,
    dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """Write ``config.json`` of a run and return what was written.

    Args:
        directory: The run folder (created if missing).
        config: The resolved run config; its ``run_id`` names the run.
        dataset: Data set name for tables (defaults to ``config.data.name``).
        extra: Further top-level keys, e.g. the resolved device.
        created: Creation time (defaults to now, UTC).

    Returns:
        The written object: ``run_id``, ``method``, ``dataset``, ``config``,
        ``versions``, ``git_commit``, ``created`` and the ``extra`` keys.
    """
    created = created or datetime.now(timezone.utc)
    payload: dict[str, Any] = {
        "run_id": config.run_id,
        "method": config.method,
        "dataset": dataset if dataset is not None else config.data.name,
        "config": config.to_dict(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": created.isoformat(timespec="seconds"),
    }
    payload.update(extra or {})
    write_json(Path(directory) / CONFIG_FILE, payload)
    return payload


def read_config(directory: Path) -> RunConfig | None:
    """Return the RunConfig stored in a run's ``config.json``, or None when there is none."""
    data = read_json(Path(directory) / CONFIG_FILE)
    if data is None or "config" not in data:
        return None
    return RunConfig.from_dict(data["config"])


def write_metrics(directory: Path, metrics: Mapping[str, Any]) -> None:
    """Write ``metrics.json``; write it last, because its presence marks the run finished."""
    write_json(Path(directory) / METRICS_FILE, metrics)


def read_metrics(directory: Path) -> dict[str, Any] | None:
    """Return the contents of a run's ``metrics.json``, or None when it is missing or unreadable."""
    return read_json(Path(directory) / METRICS_FILE)


def is_finished(directory: Path) -> bool:
    """Tell whether a run folder contains a ``metrics.json`` with ``"status": "finished"``."""
    metrics = read_metrics(directory)
    return metrics is not None and metrics.get("status") == FINISHED


def write_error(directory: Path, run_id: str, error: BaseException) -> Path:
    """Write ``error.json`` for a failed run: ``run_id``, the one-line error and the traceback.

    Returns:
        The path of the written file.
    """
    path = Path(directory) / ERROR_FILE
    message = f"{type(error).__name__}: {error}"
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    write_json(path, {"run_id": run_id, "error": message, "traceback": trace})
    return path


def read_error(directory: Path) -> dict[str, Any] | None:
    """Return the contents of a run's ``error.json``, or None when the run has none."""
    return read_json(Path(directory) / ERROR_FILE)


def clear_outcome(directory: Path) -> None:
    """Remove ``metrics.json`` and ``error.json`` left by an earlier attempt of the same run.

    A retried run must not look finished (or failed) before it has ended.
    """
    for name in (METRICS_FILE, ERROR_FILE):
        (Path(directory) / name).unlink(missing_ok=True)


class PlainFormatter(logging.Formatter):
    """Log formatter that strips ANSI colour and cursor escape sequences from the output."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI_ESCAPE.sub("", super().format(record))


class _ThreadFilter(logging.Filter):
    """Keep only records emitted by one thread, so concurrent runs in threads keep separate logs."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread_id


@contextlib.contextmanager
def run_log(directory: Path, level: int = logging.INFO) -> Iterator[Path]:
    """Write the log records of the harness, backbones and strategies to ``log.txt`` while active.

    The handler is attached to the package loggers named in ``RUN_LOGGERS``
    and handles only records from the calling thread. Loggers whose effective
    level is above ``level`` are lowered to it for the duration, so that
    ``log.txt`` gets INFO records even when the application configured no
    logging. The file is appended to, so a retried run keeps the log of
    its earlier attempts.

    Yields:
        The path of ``log.txt``.
    """
    path = Path(directory) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(PlainFormatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_ThreadFilter(threading.get_ident()))

    saved_levels: list[tuple[logging.Logger, int]] = []
    for name in RUN_LOGGERS:
        package_logger = logging.getLogger(name)
        package_logger.addHandler(handler)
        if package_logger.getEffectiveLevel() > level:
            saved_levels.append((package_logger, package_logger.level))
            package_logger.setLevel(level)
    try:
        yield path
    finally:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        for package_logger, saved in saved_levels:
            package_logger.setLevel(saved)
        handler.close()
