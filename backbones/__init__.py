"""Backbones: multi-interest encoders of an item history, and their registry.

``REGISTRY`` maps the command-line name of every backbone to its class. To
add a backbone, write an ``nn.Module`` that follows
:class:`backbones.base.Backbone` (with a frozen ``config_class`` derived
from :class:`backbones.base.BackboneConfig`) and add it to ``REGISTRY``;
the harness finds it from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from backbones.base import Backbone, BackboneConfig
from backbones.comirec_dr import ComiRecDR
from backbones.comirec_sa import ComiRecSA
from backbones.mind import MIND
from backbones.remi import REMI
from backbones.sasrec import SASRec
from backbones.validation import coerce_option
from harness.errors import ConfigError, unknown_choice
from harness.registry import lookup

__all__ = [
    "MULTI_INTEREST",
    "REGISTRY",
    "Backbone",
    "BackboneConfig",
    "backbone_options",
    "build_backbone",
]

REGISTRY: dict[str, type[nn.Module]] = {
    "comirec-sa": ComiRecSA,
    "comirec-dr": ComiRecDR,
    "mind": MIND,
    "remi": REMI,
    "sasrec": SASRec,
}

MULTI_INTEREST: tuple[str, ...] = ("comirec-sa", "comirec-dr", "mind", "remi")
"""The backbones that ``--backbones all`` expands to; ``sasrec`` (K = 1) is added by name."""

_SHARED_FIELDS = frozenset(field.name for field in dataclasses.fields(BackboneConfig))


def backbone_options(name: str) -> dict[str, Any]:
    """Return the backbone-specific options of ``name`` with their defaults.

    The shared sizes (``n_items``, ``dim``, ``num_interests``, ``max_len``,
    ``seed``) are arguments of :func:`build_backbone`, not options, and are
    left out.

    Raises:
        ConfigError: if ``name`` is not registered; the message lists the valid names.
    """
    config_class = lookup(REGISTRY, name, "backbone").config_class
    return {
        field.name: field.default
        for field in dataclasses.fields(config_class)
        if field.name not in _SHARED_FIELDS
    }


def build_backbone(
    name: str,
    *,
    n_items: int,
    dim: int = 64,
    num_interests: int = 4,
    max_len: int = 50,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Construct a registered backbone with seeded parameter initialisation.

    Parameters are drawn inside ``torch.random.fork_rng`` after seeding the
    CPU generator with ``seed``, so the same arguments give the same weights
    and the caller's global RNG state is left as it was. Only the CPU
    generator is seeded (every backbone is built on the CPU), so CUDA RNG
    state is not touched either. ``seed`` also seeds the backbone's own
    generators (MIND's routing logits, SASRec's dropout).

    Args:
        name: A key of :data:`REGISTRY`.
        n_items: Number of real items; the embedding table has ``n_items + 1`` rows.
        dim: Embedding size D.
        num_interests: Number of interests K; ``sasrec`` ignores it and uses 1.
        max_len: Maximum history length L.
        options: Backbone-specific options (see :func:`backbone_options`);
            text values such as ``"false"`` or ``"3"`` are converted to the
            option's type.
        seed: Seed of the initialisation and of the backbone's own generators.

    Returns:
        The backbone module, in train mode, on the CPU.

    Raises:
        ConfigError: for an unknown name or option (the message lists the
            valid ones), a value of the wrong type, or an invalid size.
    """
    backbone_class = lookup(REGISTRY, name, "backbone")
    config_class = backbone_class.config_class
    valid = backbone_options(name)
    resolved: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key in _SHARED_FIELDS:
            raise ConfigError(
                f"invalid option {key!r} for backbone {name!r}: it is a shared size; "
                f"pass it as the {key} argument instead"
            )
        if key not in valid:
            raise unknown_choice(f"{name} option", key, valid)
        resolved[key] = coerce_option(config_class, key, value)

    config = config_class(
        n_items=n_items,
        dim=dim,
        num_interests=num_interests,
        max_len=max_len,
        seed=seed,
        **resolved,
    )
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        return backbone_class(config)
