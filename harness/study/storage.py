"""The Optuna storage of a study: where claims, tuning trials and heartbeats live.

By default a study keeps an Optuna journal file, ``optuna.journal``, in its
folder. Journal storage decides every state change by the order of the
lines in one append-only file written under a file lock. When two
processes move the same WAITING trial to RUNNING, the line written first
wins and the other process's ``set_trial_state_values`` returns False, so
a claim is atomic (Optuna 5.1, ``optuna/storages/journal/_storage.py``).

SQLite is not the default because Optuna's RDB storage makes the same
compare-and-set with ``SELECT ... FOR UPDATE``, which SQLite ignores, and
the pysqlite driver starts the transaction only at the UPDATE. Two
processes can then both read WAITING and both write RUNNING; four processes
claiming 150 queued trials made 177 claims in a test on Optuna 5.1 with
SQLAlchemy 2.1. An ``sqlite:///`` URL given to ``--storage`` still works:
claims on it are serialised with a lock file next to the database (see
:func:`claim_lock`), which covers processes on one machine, the only place
an SQLite file can be shared safely. PostgreSQL and MySQL URLs rely on
their row locks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"

# Seconds SQLite waits for a lock held by another process before giving up;
# heartbeats and claims of several workers share one file.
SQLITE_TIMEOUT_S = 60.0

_OPEN: dict[str, BaseStorage] = {}


def default_storage(directory: Path) -> str:
    """Return the default storage of a study folder: its journal file."""
    return str(Path(directory) / JOURNAL_FILE)


def is_url(storage: str) -> bool:
    """Tell whether ``storage`` is an RDB URL (``dialect://...``) rather than a journal file path."""
    return "://" in storage


def _open_rdb(url: str) -> BaseStorage:
    from sqlalchemy.exc import IntegrityError

    engine_kwargs: dict[str, object] = {}
    database = _sqlite_file(url)
    if database is not None:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        if not database.parent.is_dir():
            raise ConfigError(
                f"cannot open storage {url!r}: folder {database.parent} does not exist; "
                "create it or pass another --storage"
            )
    # Two workers that open a new database at once both create its tables. The
    # slower one fails on Optuna's schema-version row, but the schema exists by
    # then, so a second attempt succeeds. For SQLite the lock avoids the race.
    with claim_lock(url):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except IntegrityError:
            logger.info("storage %s was being created by another worker; opening it again", url)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class FlockJournalLock:
    """Lock of a journal file that the kernel releases when its owner process dies.

    Optuna's default journal lock is a symbolic link. A process killed while
    it owns the lock leaves the link behind, and every other worker then waits
    30 seconds (Optuna 5.1's grace period) before breaking it. An ``flock`` on
    ``<journal>.flock`` ends with its process instead. The class has the
    ``acquire``/``release`` methods that ``JournalFileBackend`` calls, because
    Optuna's own base class is private.
    """

    def __init__(self, journal: str) -> None:
        self.path = journal + ".flock"
        self._handle: int | None = None

    def acquire(self) -> bool:
        import fcntl

        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        # Closing the descriptor drops the lock.
        os.close(handle)


def _open_journal(path: str) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    parent = Path(path).parent
    if not parent.is_dir():
        raise ConfigError(
            f"cannot open storage {path!r}: folder {parent} does not exist; create it or pass another --storage"
        )
    try:
        import fcntl  # noqa: F401

        lock = FlockJournalLock(path)
    except ImportError:
        lock = None  # Optuna's symbolic-link lock, where fcntl is missing (Windows).
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=lock))


def open_storage(storage: str) -> BaseStorage:
    """Open (once per process) the storage at ``storage`` and check that it responds.

    Args:
        storage: An RDB URL that Optuna accepts (``sqlite:///study.db``,
            ``postgresql://user@host/db``, ``mysql+pymysql://...``) or the
            path of a journal file (created if missing).

    Returns:
        The storage; later calls with the same string return the same object.

    Raises:
        ConfigError: If the storage cannot be opened or read: a malformed
            URL, a missing database driver, an unreachable server, or a
            journal folder that does not exist.
    """
    if storage in _OPEN:
        return _OPEN[storage]
    try:
        opened = _open_rdb(storage) if is_url(storage) else _open_journal(storage)
        # A cheap read, so that an unreachable server fails here and not in a worker.
        opened.get_all_studies()
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot open storage {storage!r}: the database driver {exc.name!r} is not installed; "
            "install it or omit --storage to use a journal file in the study folder"
        ) from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"cannot open storage {storage!r}: {reason}; check the URL and that the server is "
            "reachable, or omit --storage to use a journal file in the study folder"
        ) from None
    _OPEN[storage] = opened
    return opened


def _sqlite_file(storage: str) -> Path | None:
    if not storage.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(storage).database
    if not database or database == ":memory:":
        return None
    return Path(database)


@contextlib.contextmanager
def claim_lock(storage: str) -> Iterator[None]:
    """Hold an exclusive lock while a claim reads and changes a trial's state, where needed.

    For an SQLite URL this is an ``flock`` on ``<database>.claims.lock``, which
    the kernel releases when the holder exits, even by SIGKILL. Other
    storages make the claim atomic themselves, and this does nothing.
    """
    database = _sqlite_file(storage)
    if database is None:
        yield
        return
    try:
        import fcntl
    except ImportError:
        # NOTE: without fcntl (Windows) SQLite claims are not serialised, so two
        # local workers can claim the same cell; use the default journal file there.
        yield
        return
    lock_path = database.with_name(database.name + ".claims.lock")
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)
