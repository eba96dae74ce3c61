"""Typed hyperparameters: each family declares a frozen dataclass, one default per field.

``parse`` turns a config block (a mapping) into that dataclass: an unknown key is an error
naming the key and the family (with the closest declared name), and values are checked against
the field's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``).
YAML writes ``2`` for ``2.0``, so an integer is accepted where a float is declared.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Literal


class HyperparameterError(ValueError):
    """A config block does not fit its family's hyperparameters."""


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """What every family declares.

    ``encoding``: how a combination becomes dosage columns, ``additive`` (the sum of its
    singles' columns) or ``unique`` (a column of its own). It is the model's setting, not the
    dataset's, because the model is built on those columns (their number and meaning) and the
    same dataset is read both ways in one experiment.
    """

    encoding: Literal["additive", "unique"] = "additive"


def names(dataclass: type) -> list[str]:
    return [f.name for f in dataclasses.fields(dataclass)]


def closest(key: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, else empty."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_message(key: str, known: list[str], family: str) -> str:
    hint = closest(key, known) or f"; it declares {sorted(known)}"
    return f"{family}: unknown hyperparameter {key!r}{hint}"


def parse(dataclass: type, values: Mapping | None, family: str, strict: bool = True):
    """The ``dataclass`` instance for ``values``; ``strict=False`` drops unknown keys instead
    (for reading a checkpoint written before a family stopped declaring a key)."""
    if isinstance(values, dataclass):
        return values
    if dataclasses.is_dataclass(values):  # e.g. a plug-in's class, loaded a second time
        values = dataclasses.asdict(values)
    values = dict(values or {})
    known = names(dataclass)
    unknown = [k for k in values if k not in known]
    if unknown and strict:
        raise HyperparameterError(unknown_key_message(unknown[0], known, family))
    hints = typing.get_type_hints(dataclass)
    kwargs = {k: _check(family, k, v, hints[k]) for k, v in values.items() if k in known}
    return dataclass(**kwargs)


def _check(family: str, key: str, value, annotation):
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if is_union else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise HyperparameterError(f"{family}: hyperparameter {key!r} must not be null")
    for option in options:
        if option is type(None):
            continue
        ok, converted = _fits(value, option)
        if ok:
            return converted
    raise HyperparameterError(
        f"{family}: hyperparameter {key!r} must be {_describe(options)}, got {value!r}")


def _fits(value, option):
    if typing.get_origin(option) is Literal:
        return value in typing.get_args(option), value
    if option is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):  # bool is an int subclass; never a number here
        return False, value
    if option is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int), value
    if option is float:
        return (True, float(value)) if isinstance(value, (int, float)) else (False, value)
    return isinstance(value, option), value


def _describe(options) -> str:
    parts = []
    for option in options:
        if option is type(None):
            parts.append("null")
        elif typing.get_origin(option) is Literal:
            parts.append("one of " + ", ".join(repr(a) for a in typing.get_args(option)))
        else:
            parts.append(getattr(option, "__name__", str(option)))
    return " or ".join(parts)
