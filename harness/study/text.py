"""Wording helpers for the study's log lines and messages."""

from __future__ import annotations


def count_noun(count: int, noun: str, plural: str | None = None) -> str:
    """Return ``count`` followed by ``noun`` in the singular or plural: ``1 job``, ``2 jobs``.

    Args:
        count: The number of things.
        noun: The singular form.
        plural: The plural form, when it is not ``noun + "s"``.
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"
