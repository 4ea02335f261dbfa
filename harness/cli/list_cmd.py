"""The `harness list` command: registered backbones, strategies and data formats."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping

import typer

from harness.data.readers import FORMATS


def describe(registry: Mapping[str, object]) -> dict[str, str]:
    """Map each registered name to the first line of its own docstring ('' when it has none).

    A class's ``__doc__`` is read directly rather than through
    :func:`inspect.getdoc`, which would fall back to a base class such as
    ``nn.Module`` and describe every undocumented entry the same way.
    """
    descriptions = {}
    for name, entry in registry.items():
        doc = inspect.cleandoc(entry.__doc__ or "")
        # Docstrings mark code as ``literal`` for Sphinx; a terminal reads it better bare.
        descriptions[name] = doc.splitlines()[0].replace("``", "") if doc else ""
    return descriptions


def build_listing() -> dict[str, dict[str, str]]:
    """Describe every registered backbone, strategy and data format.

    The model packages are imported here rather than at module level, so
    that the data commands work without loading torch.
    """
    import backbones
    import strategies

    return {
        "backbones": describe(backbones.REGISTRY),
        "strategies": describe(strategies.REGISTRY),
        "formats": describe(FORMATS),
    }


def format_listing(listing: Mapping[str, Mapping[str, str]]) -> str:
    """Render a listing as one titled, aligned block per section."""
    width = max((len(name) for section in listing.values() for name in section), default=0)
    blocks = []
    for title, entries in listing.items():
        lines = [f"{title}:"]
        lines.extend(f"  {name:<{width}}  {text}".rstrip() for name, text in entries.items())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def list_components(
    json_output: bool = typer.Option(
        False, "--json", help="Print one JSON object instead of text."
    ),
) -> None:
    """List registered backbones, selection strategies and data formats."""
    listing = build_listing()
    typer.echo(json.dumps(listing) if json_output else format_listing(listing))


def register(app: typer.Typer) -> None:
    """Add the `list` command to the app."""
    app.command("list")(list_components)
