"""Checks shared by the backbone configs, ``build_backbone`` and the forward passes.

The config dataclasses call :func:`check_sizes` and :func:`check_positive` from
``__post_init__`` so that an invalid value fails on construction, before any
parameter is allocated. :func:`coerce_option` turns option values that arrive
as text (from a command line or a JSON file) into the field's declared type.
:func:`check_history` validates the inputs of every ``forward``.
"""

from __future__ import annotations

import numbers
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import torch

from backbones.base import BackboneConfig
from harness.errors import ConfigError

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_NONE_WORDS = frozenset({"none", "null"})


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a ConfigError unless ``value`` is positive (or zero when ``allow_zero``)."""
    if value > 0 or (value == 0 and allow_zero):
        return
    if allow_zero:
        bound = ">= 0"
    elif isinstance(value, int):
        bound = ">= 1"
    else:
        bound = "> 0"
    raise ConfigError(f"invalid {name}={value!r}: must be {bound}")


def check_sizes(config: BackboneConfig) -> None:
    """Validate the sizes every backbone shares: item count, D, K, L and the seed.

    Integer types other than ``int`` (NumPy's, for example) are converted to
    ``int`` in place, so the frozen config always contains plain integers.

    Raises:
        ConfigError: naming the first invalid field and its value.
    """
    for name in ("n_items", "dim", "num_interests", "max_len", "seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"invalid {name}={value!r}: must be an integer")
        object.__setattr__(config, name, int(value))
    if config.num_interests < 1:
        raise ConfigError(f"invalid num_interests={config.num_interests}: K must be >= 1")
    check_positive("n_items", config.n_items)
    check_positive("dim", config.dim)
    check_positive("max_len", config.max_len)


def check_history(history: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Validate a padded history batch and return its mask as a bool tensor.

    Args:
        history: ``(B, L)`` integer item ids.
        mask: ``(B, L)`` True (or 1) on real items.
        max_len: The backbone's maximum history length.

    Raises:
        ValueError: if the shapes disagree or the ids are not integers.
        ConfigError: if ``L`` exceeds ``max_len``.
    """
    if history.dim() != 2 or history.shape != mask.shape:
        raise ValueError(
            f"history and mask must both be (B, L); got {tuple(history.shape)} and {tuple(mask.shape)}"
        )
    if history.dtype.is_floating_point or history.dtype == torch.bool:
        raise ValueError(f"history must hold integer item ids, got dtype {history.dtype}")
    if history.shape[1] > max_len:
        raise ConfigError(
            f"history has L={history.shape[1]} positions but the backbone was built with "
            f"max_len={max_len}; pad histories to at most max_len positions"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def coerce_option(config_class: type, name: str, value: object) -> object:
    """Convert an option value to the type declared for field ``name`` of ``config_class``.

    Text values are parsed (``"true"``/``"false"`` for booleans, numbers for
    ``int`` and ``float``, ``"none"`` for optional fields), so that options
    given on a command line behave like options given in Python. Values of the
    right type pass through unchanged.

    Args:
        config_class: A backbone config dataclass.
        name: The field name (already checked to exist).
        value: The value the user gave.

    Returns:
        The value converted to the field's type.

    Raises:
        ConfigError: if the value cannot be read as the field's type; the
            message names the option, the value and the expected type.
    """
    hint = typing.get_type_hints(config_class)[name]
    try:
        return _coerce(hint, value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid option {name}={value!r}: {exc}") from None


def _coerce(hint: Any, value: object) -> object:
    origin = get_origin(hint)
    if origin is Literal:
        valid = get_args(hint)
        if value in valid:
            return value
        choices = ", ".join(repr(v) for v in valid)
        raise ValueError(f"expected one of {choices}")
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(hint) if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if len(members) < len(get_args(hint)):
                return None
            raise ValueError("None is not allowed")
        return _coerce(members[0], value)
    if hint is bool:
        return _to_bool(value)
    if hint is int:
        return _to_int(value)
    if hint is float:
        return _to_float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected text")
    return value


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError("expected true or false")


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError("expected a number")
