"""Stopping a study on Ctrl-C (SIGINT) or SIGTERM: the exception that reports it, and SIGTERM handling.

A study stops the same way on either signal. The run in flight is
abandoned and its claim released, finished runs stay as they are, and
running the same command again resumes the study.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from harness.study.text import count_noun


class StudyInterrupted(KeyboardInterrupt):
    """Raised by :func:`harness.study.run_study` when Ctrl-C or SIGTERM stopped the study.

    It is a ``KeyboardInterrupt``, so callers that handle Ctrl-C already
    handle it too.

    Attributes:
        done: Runs finished (or tuning trials done) so far, including those
            of earlier invocations and of other workers.
        total: Runs (or tuning trials) of the whole study.
        unit: What was counted, in the singular: ``run`` or ``tuning trial``.
    """

    def __init__(self, done: int, total: int, unit: str = "run") -> None:
        super().__init__(done, total, unit)
        self.done = done
        self.total = total
        self.unit = unit

    def __str__(self) -> str:
        verb = "finished" if self.unit == "run" else "done"
        return (
            f"{self.done} of {count_noun(self.total, self.unit)} {verb}; "
            "run the same command to resume"
        )


@dataclass
class StopSignal:
    """The signal that stopped a study: SIGINT unless a SIGTERM arrived."""

    signum: int = signal.SIGINT

    @property
    def exit_status(self) -> int:
        """Return the shell's status for a process stopped by this signal: 128 + its number."""
        return 128 + self.signum


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[StopSignal]:
    """Handle SIGTERM like Ctrl-C (SIGINT) while the block runs.

    The SIGTERM handler calls the SIGINT handler in effect at that moment.
    A SIGTERM that arrives while a claim is being recorded therefore waits
    for the record to finish, as Ctrl-C does
    (see :func:`harness.study.claim.deferred_interrupt`). Where SIGINT is
    ignored (a background job of a non-interactive shell), SIGTERM raises
    ``KeyboardInterrupt`` directly. Outside the main thread, where Python
    delivers no signals, this does nothing.

    Yields:
        The signal record, whose ``signum`` becomes SIGTERM once one arrives.
    """
    stop = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum
        interrupt_handler = signal.getsignal(signal.SIGINT)
        if callable(interrupt_handler):
            interrupt_handler(signum, frame)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        # None means a handler installed outside Python, which cannot be restored from here.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
