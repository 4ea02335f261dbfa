"""Small helpers for the English text of reports and their log lines."""

from __future__ import annotations


def count_noun(count: int, singular: str, plural: str | None = None) -> str:
    """Format a count with its noun in the right number: ``1 seed``, ``3 seeds``, ``0 data sets``.

    Args:
        count: The number of things.
        singular: The noun for one thing.
        plural: The noun for any other count; defaults to ``singular + "s"``.
    """
    noun = singular if count == 1 else (plural or f"{singular}s")
    return f"{count} {noun}"
