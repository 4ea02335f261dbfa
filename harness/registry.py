"""Name lookup in the public registries of backbones and strategies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from harness.errors import unknown_choice

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return ``registry[name]`` or raise a ConfigError listing the valid names."""
    try:
        return registry[name]
    except KeyError:
        raise unknown_choice(kind, name, registry) from None


def expand_names(spec: str, registry: Mapping[str, object], all_names: tuple[str, ...], kind: str) -> tuple[str, ...]:
    """Expand a comma-separated CLI list, where ``all`` means ``all_names``.

    Names keep the order given; duplicates are dropped. Every name is checked
    against the registry before anything runs.
    """
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        expanded = all_names if name == "all" else (name,)
        for item in expanded:
            lookup(registry, item, kind)
            if item not in names:
                names.append(item)
    if not names:
        raise unknown_choice(kind, spec, registry)
    return tuple(names)
