"""User-facing errors.

Library code raises :class:`HarnessError` (or a subclass) for anything a user
can fix: a bad file, an unknown name, an invalid option. The CLI prints its
message as one line and exits with a non-zero status, without a traceback.
Messages name the file, line or value at fault and state what to do.
"""

from __future__ import annotations

from collections.abc import Iterable


class HarnessError(Exception):
    """An error caused by user input, reported without a traceback."""


class DataError(HarnessError):
    """A data file that cannot be read or prepared."""


class ConfigError(HarnessError, ValueError):
    """An invalid option value or an unknown name."""


def unknown_choice(kind: str, value: object, valid: Iterable[str]) -> ConfigError:
    """Build the error for a value that is not one of the valid choices.

    Args:
        kind: What the value is, e.g. ``"backbone"``.
        value: The value the user gave.
        valid: Every accepted value; listed sorted in the message.

    Returns:
        A :class:`ConfigError` to raise.
    """
    choices = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} {value!r}; valid choices: {choices}")
