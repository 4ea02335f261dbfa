"""Command-line interface: ``harness list|data|train|study|report|ablation``.

The CLI only parses flags, builds config objects and calls library
functions. Each command lives in its own module and registers itself on the
Typer app. User errors (:class:`harness.errors.HarnessError`) are printed as
one line on stderr with exit status 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from harness.cli import ablation_cmd, data_cmd, list_cmd, report_cmd, study_cmd, train_cmd
from harness.errors import HarnessError

app = typer.Typer(
    name="harness",
    help="Benchmark interest-selection strategies for multi-interest sequential recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (list_cmd, data_cmd, train_cmd, study_cmd, ablation_cmd, report_cmd):
    module.register(app)


def main() -> None:
    """Run the CLI; report user errors as one line and exit with status 2."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Optuna logs every trial at INFO; the study command prints its own progress.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        app()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
