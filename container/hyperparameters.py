"""SageMaker hyperparameters (a JSON object of strings) -> a typed, validated model.config.TrainingConfig.

Every client quotes values differently (see ../shared/docs/sdk-local-mode.md): SDK v2 writes `str(v)`
("True", "[64, 32]", "{'a': 1}"), SDK v3 and framework estimators write JSON ("true", "\"resnet\""), the
raw API writes whatever the user typed ("64,32"). Each value is decoded as JSON, then as a Python literal,
then kept as the raw string, and finally coerced to the field's declared type. Keys that SageMaker or the
SDK add (`sagemaker_*`, `_tuning_objective_metric`) are ignored; any other unknown key fails the job and
the message lists the valid ones.
"""

from __future__ import annotations

import ast
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from container.errors import JobError
from model.config import TrainingConfig

IGNORED_PREFIXES = ("sagemaker_",)
IGNORED_KEYS = frozenset({"_tuning_objective_metric"})


class HyperparameterError(JobError):
    pass


def parse_hyperparameters(raw: Mapping[str, Any]) -> TrainingConfig:
    types = typing.get_type_hints(TrainingConfig)
    valid = [f.name for f in fields(TrainingConfig)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if key not in types:
            raise HyperparameterError(f"unknown hyperparameter {key!r}; the valid hyperparameters are "
                                      f"{', '.join(valid)}")
        try:
            values[key] = _coerce(decode(value), types[key])
        except ValueError as error:
            raise HyperparameterError(f"hyperparameter {key}={value!r} is invalid: {error}") from None
    try:
        return TrainingConfig(**values)
    except ValueError as error:
        raise HyperparameterError(f"invalid hyperparameters: {error}") from None


def decode(value: Any) -> Any:
    """JSON first, then a Python literal (what `str()` of a list or bool gives), else the string itself."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def _coerce(value: Any, declared: Any) -> Any:
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if isinstance(value, str) and declared is not str:
        value = decode(value)   # a JSON-encoded string holding a number or list: "\"50\"" -> "50" -> 50
    if declared is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("expected true or false")
    if declared is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ValueError("expected a whole number")
        return int(value)
    if declared is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        return float(value)
    if declared is str:
        return value if isinstance(value, str) else str(json.dumps(value))
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or value == "":
            return None
        return _coerce(value, next(a for a in args if a is not type(None)))
    if origin is tuple:
        item_type = args[0]
        if isinstance(value, str):
            items: list[Any] = [decode(part) for part in value.split(",") if part.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            items = [value]
        return tuple(_coerce(item, item_type) for item in items)
    raise ValueError(f"unsupported type {declared}")   # a field type this parser does not know yet


def describe() -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every hyperparameter: the README's table."""
    types = typing.get_type_hints(TrainingConfig)
    rows = []
    for f in fields(TrainingConfig):
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        rows.append((f.name, _type_name(types[f.name]), "" if shown is None else str(shown), f.metadata["help"]))
    return rows


def _type_name(declared: Any) -> str:
    args = typing.get_args(declared)
    if typing.get_origin(declared) is tuple:
        return f"list of {args[0].__name__}"
    if type(None) in args:
        return str(next(a for a in args if a is not type(None)).__name__)
    return str(declared.__name__)


def markdown_table() -> str:
    """The README's hyperparameter table (tests/training/test_docs.py keeps the README in step)."""
    lines = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for name, kind, default, text in describe():
        shown = f"`{default}`" if default else "—"
        lines.append(f"| `{name}` | {kind} | {shown} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
