"""A space's parameter types: a fixed value, a choice, an integer or a float range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


Param = Fixed | Choice | IntRange | FloatRange


def contains(param: Param, value: Any) -> bool:
    """Whether `value` can be drawn from `param`."""
    if isinstance(param, Fixed):
        return bool(value == param.value)
    if isinstance(param, Choice):
        return value in param.choices
    if isinstance(param, IntRange):
        return bool(param.low <= value <= param.high and (value - param.low) % param.step == 0)
    return bool(param.low <= value <= param.high)


def choices(param: Fixed | Choice) -> tuple[Any, ...]:
    """Every value a fixed value or a choice can give."""
    return (param.value,) if isinstance(param, Fixed) else param.choices


def extremes(param: Param) -> tuple[Any, Any]:
    """The smallest and the largest value `param` can give (a number's)."""
    if isinstance(param, Fixed):
        return param.value, param.value
    if isinstance(param, Choice):
        return min(param.choices), max(param.choices)
    return param.low, param.high
