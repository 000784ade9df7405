"""One plain row: the cells of a request body that holds exactly one row in its commonest spelling, read
without codecs.decode's general machinery (charset lookup, csv module, JSON forms, a Table).

    cells = plain_row(body, mimetype, schema)   # one cell per feature, in training order; or None

Plain means ASCII and:
    text/csv               one line (a trailing newline allowed), no quotes, one field per feature, and no
                           field that names a feature (a header: codecs reads it)
    application/json       {"instances": [row]} or [row], row a list in training order or an object naming
                           exactly the features, every value a string, number or boolean
    application/jsonlines  one line holding such a row
None is never an error: whatever is not plain goes to codecs.decode, which reads it or says what is wrong.
Cells that do come back are the cells codecs.decode puts in its table's one row (tests/serving/
test_plainrow.py compares the two on generated bodies).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from container.serving.codecs import CSV, JSON, JSONLINES, InputSchema
from model.table import Cell

_NOT_CSV = ('"', "\r", "\n", "\x00")   # quoting, a second line, a NUL: the csv module's business
_VALUE_TYPES = frozenset((str, int, float, bool))   # codecs._cell's types, None aside (missing: not plain)


def plain_row(body: bytes, mimetype: str, schema: InputSchema) -> Sequence[Cell] | None:
    if not body.isascii():   # a byte order mark, another charset, invalid UTF-8: codecs decodes those
        return None
    text = body.decode("ascii")
    if mimetype == CSV:
        return _csv_row(text, schema)
    if mimetype == JSON:
        document = _json(text)
        if type(document) is dict and len(document) == 1:
            document = document.get("instances")
        return _json_row(document[0], schema) if type(document) is list and len(document) == 1 else None
    if mimetype == JSONLINES:
        line = text.strip()
        return None if "\n" in line else _json_row(_json(line), schema)
    return None


def _csv_row(text: str, schema: InputSchema) -> Sequence[Cell] | None:
    line = text.rstrip("\r\n")
    if not line or any(character in line for character in _NOT_CSV):
        return None
    cells = line.split(",")
    if len(cells) != len(schema.feature_names):
        return None
    # a header names at least half its fields; a data row none
    return cells if schema.known_names.isdisjoint(map(str.strip, cells)) else None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _json_row(row: Any, schema: InputSchema) -> Sequence[Cell] | None:
    names = schema.feature_names
    if type(row) is dict:
        if len(row) != len(names) or not all(name in row for name in names):
            return None
        row = [row[name] for name in names]
    elif type(row) is not list or len(row) != len(names):
        return None
    cells: Sequence[Cell] = row
    return cells if _VALUE_TYPES.issuperset(map(type, cells)) else None   # exact types: no subclass
