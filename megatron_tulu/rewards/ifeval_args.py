"""Argument checks shared by the IFEval ground-truth parsers (:mod:`ifeval_tulu`, :mod:`ifeval_g`).

Each function takes the raw value from the ground truth and the field path used in error messages
(e.g. ``ground_truth.N``) and returns the normalised value, or raises ``ValueError`` naming the field and
what is wrong. Released data is JSON or a Python literal, so integers may arrive as integral floats (``3.0``);
booleans are never numbers.
"""

from __future__ import annotations

from typing import Any


def as_int(value: Any, field: str, *, minimum: int = 0) -> int:
    """An integer >= ``minimum`` (integral floats accepted, bools and strings not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be an integer, got {type(value).__name__} {value!r}")  # noqa: TRY004
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return int(value)


def as_str(value: Any, field: str, *, nonblank: bool = True) -> str:
    """A string (non-blank unless ``nonblank=False``)."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__} {value!r}")  # noqa: TRY004
    if nonblank and not value.strip():
        raise ValueError(f"{field} must be a non-empty string")
    return value


def as_str_list(value: Any, field: str) -> list[str]:
    """A list of non-blank strings."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{field} must be a list of strings, got {type(value).__name__} {value!r}")  # noqa: TRY004
    return [as_str(v, f"{field}[{i}]") for i, v in enumerate(value)]


def as_first_str(value: Any, field: str) -> str:
    """A string, or the first string of a non-empty list (IFEvalG accepts both for some words)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{field} must be a string or a non-empty list of strings")
        return as_str(value[0], f"{field}[0]")
    return as_str(value, field)


def as_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``, exactly."""
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")
    return value
