"""Request bodies for the server tests: the same used cars (unseen in training) in every input format,
and parsers for every response format."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tests.jobs import CARS_HEADER, CARS_LINES

NAMES = CARS_HEADER.strip().split(",")
FEATURES = NAMES[1:]                                   # training order, target (Price) removed
ROWS = [line.strip().split(",")[1:] for line in CARS_LINES[400:425]]
ROWS[3][FEATURES.index("KM")] = ""                     # missing values are imputed, not refused
ROWS[7][FEATURES.index("Color")] = ""


def typed(cell: str) -> Any:
    """A CSV cell as a JSON client would send it: a number, a string, or null when empty."""
    if not cell:
        return None
    try:
        number = float(cell)
    except ValueError:
        return cell
    return int(number) if number.is_integer() else number


def shuffled(names: Sequence[str]) -> list[str]:
    order = list(names)
    random.Random(7).shuffle(order)
    return order


def csv_body(rows: list[list[str]], header: Sequence[str] | None = None, features: Sequence[str] = FEATURES) -> str:
    if header is None:
        return "".join(",".join(row) + "\n" for row in rows)
    index = [list(features).index(name) for name in header]
    return ",".join(header) + "\n" + "".join(",".join(row[i] for i in index) + "\n" for row in rows)


def records(rows: list[list[str]], features: Sequence[str] = FEATURES) -> list[dict[str, Any]]:
    return [{name: typed(row[features.index(name)]) for name in shuffled(features)} for row in rows]


def bodies(rows: list[list[str]], features: Sequence[str] = FEATURES) -> dict[str, tuple[str, bytes]]:
    """format name -> (Content-Type, body), all holding `rows`."""
    features = list(features)
    lists = [[typed(cell) for cell in row] for row in rows]
    columns = shuffled(features)
    split = [[typed(row[features.index(name)]) for name in columns] for row in rows]
    forms: dict[str, tuple[str, str]] = {
        "csv": ("text/csv", csv_body(rows, features=features)),
        "csv with header": ("text/csv", csv_body(rows, shuffled(features), features)),
        "json instances lists": ("application/json", json.dumps({"instances": lists})),
        "json instances objects": ("application/json", json.dumps({"instances": records(rows, features)})),
        "json bare list": ("application/json", json.dumps(lists)),
        "json dataframe_split": ("application/json",
                                 json.dumps({"dataframe_split": {"columns": columns, "data": split}})),
        "json dataframe_records": ("application/json", json.dumps({"dataframe_records": records(rows, features)})),
        "jsonlines lists": ("application/jsonlines", "".join(json.dumps(row) + "\n" for row in lists)),
        "jsonlines objects": ("application/jsonlines",
                              "".join(json.dumps(record) + "\n" for record in records(rows, features))),
    }
    return {name: (mimetype, text.encode()) for name, (mimetype, text) in forms.items()}


def npy_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _csv(text: str) -> list[float]:
    assert text.endswith("\n")
    return [float(line) for line in text.split("\n")[:-1]]


def _json(text: str) -> list[float]:
    document = json.loads(text)
    assert list(document) == ["predictions"]
    return [float(value) for value in document["predictions"]]


def _jsonlines(text: str) -> list[float]:
    assert text.endswith("\n")
    return [float(json.loads(line)["prediction"]) for line in text.split("\n")[:-1]]


PARSERS: dict[str, Callable[[str], list[float]]] = {
    "text/csv": _csv, "application/json": _json, "application/jsonlines": _jsonlines}
