"""Validation of user settings: one clear line naming the field and what is allowed.

Every public entry point (``generate``, ``drafters.make``, the run configuration) checks its
settings with these before anything is compiled, so a bad value never reaches tracing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def integer(value, field: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; TypeError for non-integers (bool and 1.0 included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{field} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    return _within(value, field, low, high)


def optional_integer(value, field: str, **bounds) -> int | None:
    return None if value is None else integer(value, field, **bounds)


def number(value, field: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float in [low, high]; TypeError for non-numbers (and bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value}")
    return _within(value, field, low, high)


def _within(value, field: str, low, high):
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f">= {low}" if high is None else f"between {low} and {high}" if low is not None else f"<= {high}"
        )
        raise ValueError(f"{field} must be {bounds}, got {value}")
    return value


def integers(values: Iterable, field: str, **bounds) -> tuple[int, ...]:
    """A sequence of ints, each checked like ``integer`` (the index is named in the error)."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{field} must be a list of integers, got {values!r}")
    return tuple(integer(v, f"{field}[{i}]", **bounds) for i, v in enumerate(values))
