"""Request bodies to a model.table.Table, predictions to response bodies; no Flask, no model weights.

Inputs (media type matched case-insensitively, parameters allowed; rows are labelled "row N", 1-based):
    text/csv               one row per line in training column order (target left out); a first line that
                           names the features is a header, and then columns may come in any order; the
                           `header=present|absent` parameter overrides the detection. Empty field = missing.
    application/json       {"instances": [...]}, each a list in training order or an object keyed by
                           feature name (null = missing); a bare top-level list is read as instances; MLflow's
                           {"dataframe_split": {"columns": [...], "data": [[...]]}} and
                           {"dataframe_records": [{...}]}. An object must name every feature.
    application/jsonlines  one instance (list or object) per line.
    application/x-npy      all-numeric models only: a 1-D (one row) or 2-D numeric array, no pickles.
Outputs, one record per input row, in order:
    text/csv               one prediction per line          application/jsonlines  {"prediction": x} per line
    application/json       {"predictions": [x, ...]}
With extras (prediction intervals: "lower", "upper"; explanations: "explanation"), each is a further JSON
Lines key or JSON list beside "predictions" ("explanations"), in the same row order; number extras are
also further CSV columns.
Every line of a CSV or JSON Lines response ends with a newline, except the last one in a batch transform
(SAGEMAKER_BATCH), where SageMaker adds it. Numbers are written with Python's
shortest round-trip repr, so a client reads back exactly the float64 the model computed.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import math
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from werkzeug.datastructures import MIMEAccept

from container.serving import csvcolumns, floattext
from container.serving.errors import InvalidInput, not_acceptable, unsupported_content_type
from model.table import Cell, Table

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
OUTPUT_TYPES = (CSV, JSON, JSONLINES)
_JSON_LISTS = {"explanation": "explanations"}   # a JSON Lines key -> its list's name in a JSON response
JSON_FORMS = ("instances", "dataframe_split", "dataframe_records")
COLUMNAR_MIN_BYTES = 32 * 1024   # CSV bodies from this size try csvcolumns.py's decoder first
FLOATTEXT_MIN_ROWS = 512         # (at least 1) responses of this many rows have their numbers written by floattext.py


@dataclass(frozen=True)
class InputSchema:
    """What the codecs need to know about the model: its feature order, target and kind."""

    feature_names: tuple[str, ...]
    target: str
    numeric_only: bool
    numeric_features: frozenset[str] = frozenset()   # read as numbers by the columnar CSV decoder

    @functools.cached_property
    def known_names(self) -> frozenset[str]:
        """The names a CSV header may hold: the features and the target."""
        return frozenset((*self.feature_names, self.target))

    @property
    def input_types(self) -> list[str]:
        return [CSV, JSON, JSONLINES, *([NPY] if self.numeric_only else [])]


def decode(body: bytes, mimetype: str, params: Mapping[str, str], schema: InputSchema) -> Table:
    """The rows in `body`; 415 for a type this model cannot read, 400 (InvalidInput) for a bad body."""
    require_input_type(mimetype, mimetype, schema)
    if not body or body.isspace():   # not body.strip(), which copies a 6 MiB body to look at it
        raise InvalidInput("the request body is empty; send at least one row")
    if mimetype == NPY:
        return _decode_npy(body, schema)
    if mimetype == CSV and len(body) >= COLUMNAR_MIN_BYTES:
        table = _decode_csv_columnar(body, params, schema)
        if table is not None:
            return table
    text = _text(body, params.get("charset", "utf-8"))
    if mimetype == CSV:
        return _decode_csv(text, params.get("header", "auto").lower(), schema)
    if mimetype == JSON:
        return _decode_json(_parse_json(text), schema)
    return _decode_jsonlines(text, schema)


def require_input_type(mimetype: str, content_type: str, schema: InputSchema) -> None:
    """415 unless this model reads `mimetype` (the media type of the full `content_type` header)."""
    if mimetype not in schema.input_types:
        note = "; application/x-npy needs a model whose features are all numeric" if mimetype == NPY else ""
        raise unsupported_content_type(content_type, schema.input_types, note)


def response_type(accept: MIMEAccept, request_type: str) -> str:
    """The Accept entry with the highest q-value; without Accept or for */*, the request's own format
    (JSON for x-npy requests). Parameters on Accept entries (charset) are ignored; 406 if nothing fits."""
    preferred = request_type if request_type in OUTPUT_TYPES else JSON
    entries = [(value.split(";")[0].strip().lower(), quality) for value, quality in accept]
    if not entries:
        return preferred
    best = MIMEAccept(entries).best_match([preferred, *(t for t in OUTPUT_TYPES if t != preferred)])
    if best is None:
        raise not_acceptable(", ".join(value for value, _ in accept), list(OUTPUT_TYPES))
    return best


def encode(predictions: np.ndarray, mimetype: str, *, final_newline: bool = True,
           extras: Mapping[str, np.ndarray | Sequence[Mapping[str, Any]]] | None = None) -> bytes:
    """The response body. `final_newline=False` (batch transform) leaves the newline after the last CSV or
    JSON Lines record out: SageMaker's AssembleWith=Line adds one after every mini-batch, and a second would
    put an empty line into the output and shift it against the input.

    `extras`: more per row, by its JSON Lines key, in row order: numbers (an array: "lower", "upper") or
    JSON objects ("explanation"). JSON: lists beside "predictions" (named as in _JSON_LISTS); JSON Lines:
    keys beside "prediction"; CSV: number columns after the prediction (objects: ValueError, a caller's
    bug: the predictor refuses such requests first).

    Numbers are written as repr() writes them (json.dumps does too): from FLOATTEXT_MIN_ROWS rows on by
    floattext.py, a column at a time, the same bytes (tests/serving/test_floattext.py)."""
    if not extras and len(predictions) < FLOATTEXT_MIN_ROWS:   # the one-row answer, without a step more
        return _encode_lists(_checked_list(predictions, "prediction"), mimetype, final_newline, {})
    values = _checked(predictions, "prediction")
    columns: dict[str, np.ndarray | list[Any]] = {
        name: _checked(items, name) if isinstance(items, np.ndarray) else list(items)
        for name, items in (extras or {}).items()}
    numbers = [column for column in columns.values() if isinstance(column, np.ndarray)]
    if mimetype == CSV and len(numbers) != len(columns):
        raise ValueError("a CSV response holds numbers only")
    if len(values) < FLOATTEXT_MIN_ROWS or len(numbers) != len(columns):   # objects: json.dumps writes them
        return _encode_lists(values.tolist(), mimetype, final_newline,
                             {name: column.tolist() if isinstance(column, np.ndarray) else column
                              for name, column in columns.items()})
    if mimetype == CSV:
        return floattext.rows([values, *numbers], [b"", *[b","] * len(numbers), b""], b"\n",
                              last_separator=final_newline)
    if mimetype == JSON:
        names = ["predictions", *(_JSON_LISTS.get(name, name) for name in columns)]
        return b"{" + b", ".join(json.dumps(name).encode() + b": [" + floattext.rows(
            [column], [b"", b""], b", ", last_separator=False) + b"]"
            for name, column in zip(names, [values, *numbers], strict=True)) + b"}"
    keys = [b'{"prediction": ', *(b", " + json.dumps(name).encode() + b": " for name in columns)]
    return floattext.rows([values, *numbers], [*keys, b"}"], b"\n", last_separator=final_newline)


def _encode_lists(values: list[float], mimetype: str, final_newline: bool, columns: Mapping[str, list[Any]]) -> bytes:
    """encode() a value at a time: for few rows (floattext's fixed cost, ~0.1 ms, is 250 reprs) and for
    explanation objects."""
    if mimetype == JSON:
        if not columns:   # json.dumps' bytes for finite floats (it writes each as repr), in a third of its time
            return ('{"predictions": [' + ", ".join(map(repr, values)) + "]}").encode()
        return json.dumps({"predictions": values,
                           **{_JSON_LISTS.get(name, name): items for name, items in columns.items()}}).encode()
    if mimetype == CSV:
        lines = [",".join(f"{value!r}" for value in row) for row in zip(values, *columns.values(), strict=True)] \
            if columns else list(map(repr, values))
    else:
        lines = [json.dumps({"prediction": value, **{name: items[index] for name, items in columns.items()}})
                 for index, value in enumerate(values)]
    return ("\n".join(lines) + ("\n" if final_newline else "")).encode()


def _checked_list(numbers: np.ndarray, name: str) -> list[float]:
    """_checked(numbers, name).tolist() for a few numbers: checked in Python, without numpy's per-call
    cost (tolist widens float32 exactly, as the conversion to float64 does)."""
    if numbers.dtype.kind != "f":   # integers and the like are written as floats
        return _checked(numbers, name).tolist()   # type: ignore[no-any-return]
    values: list[float] = numbers.tolist()
    if not all(map(math.isfinite, values)):
        _checked(numbers, name)   # raises, naming the row
    return values


def _checked(numbers: np.ndarray, name: str) -> np.ndarray:
    """`numbers` as float64 (float32 widens exactly), or 400 naming the first row whose value is not finite."""
    array = np.asarray(numbers, dtype=np.float64)
    if not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidInput(f"the {name} is {float(array[index])} (the input lies far outside the training data)",
                           row=index + 1)
    return array


def _text(body: bytes, charset: str) -> str:
    try:
        decoder = codecs.lookup(charset)
    except LookupError:
        raise unsupported_content_type(f"charset={charset}", ["utf-8 or another known charset"]) from None
    try:
        text = body.decode("utf-8-sig" if decoder.name == "utf-8" else decoder.name)
    except UnicodeDecodeError as error:
        raise InvalidInput(f"the body is not valid {charset} text (byte {error.start})") from None
    return text


def _labels(count: int) -> list[str]:
    return [f"row {i}" for i in range(1, count + 1)]


def _table(names: Sequence[str], rows: list[list[Cell]]) -> Table:
    if not rows:
        raise InvalidInput("the request holds no rows")
    width = len(names)
    if len(set(names)) == width and all(len(row) == width for row in rows):
        # What Table.from_rows builds, without its checks (just made) and the label list: a table without
        # labels calls row i "row i" too. from_rows's repeated-name check is quadratic in the columns.
        grid = np.empty((len(rows), width), dtype=object)
        grid[:] = rows
        return Table({name: grid[:, i] for i, name in enumerate(names)})
    return Table.from_rows(list(names), rows, _labels(len(rows)))   # raises, naming the row or column


def _decode_csv(text: str, header: str, schema: InputSchema) -> Table:
    if header not in ("auto", "present", "absent"):
        raise InvalidInput(f"the Content-Type parameter header={header!r} must be present or absent")
    reader = csv.reader(io.StringIO(text.rstrip("\r\n")), strict=True)
    try:
        rows = cast(list[list[Cell]], list(reader))
    except csv.Error as error:
        raise InvalidInput(f"malformed CSV: {error}", row=reader.line_num) from None
    if not rows:   # e.g. a body of only a byte order mark, which decoding removes
        raise InvalidInput("the request holds no rows")
    if header == "present" or (header == "auto" and rows and _names_features(rows[0], schema)):
        return _table(_named_columns([str(cell).strip() for cell in rows[0]], schema), rows[1:])
    return _table(schema.feature_names, rows)


def _decode_csv_columnar(body: bytes, params: Mapping[str, str], schema: InputSchema) -> Table | None:
    """What _decode_csv makes of `body`, read column by column (csvcolumns.py) without a Python object per
    cell; None for a body that csvcolumns does not read, or whose answer would be an error (a header that
    names unknown or repeated columns, a width other than the features', no rows): the csv-module path
    then answers it as it always has. Numeric features come as float64 columns, which preprocessing reads
    as the float() of the strings the csv module would give; a numeric column with a missing or non-number
    cell, and every other column, comes as strings."""
    header = params.get("header", "auto").lower()
    try:
        charset = codecs.lookup(params.get("charset", "utf-8")).name
    except LookupError:
        return None
    if header not in ("auto", "present", "absent") or charset not in ("utf-8", "ascii"):
        return None
    fields = csvcolumns.split(body)
    if fields is None:
        return None
    first = fields.line(0)
    if header == "present" or (header == "auto" and _names_features(first, schema)):
        names, first_row = [cell.strip() for cell in first], 1
        if len(set(names)) != len(names) or set(names) != set(schema.feature_names):
            return None
    else:
        names, first_row = list(schema.feature_names), 0
    if fields.width != len(names) or fields.lines <= first_row:
        return None
    columns: dict[str, np.ndarray] = {}
    for index, name in enumerate(names):
        values = fields.numbers(index, first_row) if name in schema.numeric_features else None
        if values is None:
            values = fields.strings(index, first_row)
        if values is None:
            return None
        columns[name] = values
    return Table(columns)


def _names_features(first_row: Sequence[Cell], schema: InputSchema) -> bool:
    """A header names features (or the target) in at least half of its cells; data rows never do."""
    known = schema.known_names
    return sum(1 for cell in first_row if str(cell).strip() in known) * 2 >= len(first_row) > 0


def _named_columns(names: list[str], schema: InputSchema) -> list[str]:
    """Columns a client named (a CSV header, dataframe_split's "columns"), refused at once when there are
    more of them than features: then one is unknown or named twice, and finding out which through
    Table.from_rows costs time quadratic in their number (100,000 names in one header took minutes)."""
    if len(names) <= len(schema.feature_names):
        return names
    features, seen = set(schema.feature_names), set()
    for name in names:
        if name not in features:
            hint = " (it is the target, which inputs must leave out)" if name == schema.target else ""
            raise InvalidInput(f"unknown feature {name!r}{hint}; the features are "
                               f"{', '.join(schema.feature_names)}", feature=name)
        if name in seen:
            raise InvalidInput(f"the column {name!r} is named twice", feature=name)
        seen.add(name)
    return names   # not reached: more distinct names than features cannot all be features


def _parse_json(text: str, row: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}" if row is None else f"column {error.colno}"
        raise InvalidInput(f"malformed JSON: {error.msg} at {where}", row=row) from None
    except RecursionError:   # the parser recurses per level: [[[[... thousands deep exhausts the stack
        raise InvalidInput("the JSON is nested too deeply; an instance is a flat list or object of values",
                           row=row) from None
    except ValueError:   # an integer of more than sys.get_int_max_str_digits() (4300) digits
        raise InvalidInput("the JSON holds an integer with thousands of digits, which no feature can take",
                           row=row) from None


def _decode_json(document: Any, schema: InputSchema) -> Table:
    if isinstance(document, list):
        return _from_instances(document, schema)
    forms = [key for key in JSON_FORMS if isinstance(document, dict) and key in document]
    if len(forms) != 1:
        found = f"an object with keys {', '.join(map(repr, document))}" if isinstance(document, dict) \
            else f"a JSON {type(document).__name__}"
        raise InvalidInput('a JSON body is {"instances": [...]}, {"dataframe_split": {"columns": [...], '
                           '"data": [[...]]}} or {"dataframe_records": [{...}]}; got ' + found)
    value = document[forms[0]]
    if forms[0] == "dataframe_split":
        return _from_split(value, schema)
    if not isinstance(value, list):
        raise InvalidInput(f'"{forms[0]}" must be a list of rows')
    if forms[0] == "dataframe_records" and not all(isinstance(item, dict) for item in value):
        bad = next(i for i, item in enumerate(value, start=1) if not isinstance(item, dict))
        raise InvalidInput('each of "dataframe_records" must be an object keyed by feature name', row=bad)
    return _from_instances(value, schema)


def _decode_jsonlines(text: str, schema: InputSchema) -> Table:
    instances = []
    for number, line in enumerate(text.rstrip().split("\n"), start=1):
        if not line.strip():
            raise InvalidInput("the line is empty; JSON Lines needs one instance per line", row=number)
        instances.append(_parse_json(line, row=number))
    return _from_instances(instances, schema)


def _from_instances(instances: list[Any], schema: InputSchema) -> Table:
    names = schema.feature_names
    rows: list[list[Cell]] = []
    for number, instance in enumerate(instances, start=1):
        if isinstance(instance, dict):
            row = _record_row(instance, number, schema)
        elif isinstance(instance, list):
            if len(instance) != len(names):
                raise InvalidInput(f"expected {len(names)} values in training order "
                                   f"({', '.join(names)}), found {len(instance)}", row=number)
            row = instance
        elif len(names) == 1 and not isinstance(instance, dict | list):
            row = [instance]
        else:
            raise InvalidInput("an instance must be a list of values in training order or an object "
                               "keyed by feature name", row=number)
        rows.append([_cell(value, number, name) for value, name in zip(row, names, strict=True)])
    return _table(names, rows)


def _record_row(record: dict[str, Any], number: int, schema: InputSchema) -> list[Any]:
    for key in record:
        if key not in schema.feature_names:
            hint = " (it is the target, which inputs must leave out)" if key == schema.target else ""
            raise InvalidInput(f"unknown feature {key!r}{hint}; the features are "
                               f"{', '.join(schema.feature_names)}", row=number, feature=key)
    for name in schema.feature_names:
        if name not in record:
            raise InvalidInput(f"missing feature {name!r} (use null for a missing value)",
                               row=number, feature=name)
    return [record[name] for name in schema.feature_names]


def _from_split(split: Any, schema: InputSchema) -> Table:
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        raise InvalidInput('"dataframe_split" must be an object with "data" (a list of rows) and '
                           'optionally "columns"')
    columns = split.get("columns", list(schema.feature_names))
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise InvalidInput('"dataframe_split" "columns" must be a list of feature names')
    columns = _named_columns(columns, schema)
    rows: list[list[Cell]] = []
    for number, row in enumerate(split["data"], start=1):
        if not isinstance(row, list):
            raise InvalidInput('each row of "data" must be a list', row=number)
        if len(row) != len(columns):
            raise InvalidInput(f"expected {len(columns)} values (one per column), found {len(row)}",
                               row=number)
        rows.append([_cell(value, number, name) for value, name in zip(row, columns, strict=True)])
    return _table(columns, rows)


def _cell(value: Any, row: int, feature: str) -> Cell:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        # JSON integers are exact and unbounded (up to 4300 digits); beyond float64 the model's float
        # conversion would raise OverflowError instead of naming the cell
        raise InvalidInput(f"{str(value)[:20]}... ({len(str(abs(value)))} digits) is not a finite number in "
                           "float64 (it lies beyond 1.8e308)", row=row, feature=feature)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidInput(f"expected a number, a string or null, got {json.dumps(value)[:80]}",
                       row=row, feature=feature)


def _decode_npy(body: bytes, schema: InputSchema) -> Table:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise InvalidInput(f"the body is not a readable .npy array without pickles: {error}") from None
    except MemoryError:   # np.load allocates the shape the header declares before it reads the data
        raise InvalidInput("the .npy header declares an array far larger than the body") from None
    if not isinstance(array, np.ndarray):
        raise InvalidInput("the body is an .npz archive; send one .npy array")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    names = schema.feature_names
    if array.ndim != 2 or array.shape[1] != len(names):
        raise InvalidInput(f"expected a 1-D array of {len(names)} values or a 2-D array of shape "
                           f"(rows, {len(names)}), got shape {array.shape}")
    if array.shape[0] == 0:
        raise InvalidInput("the request holds no rows")
    numbers = array.astype(np.float64)
    return Table({name: numbers[:, i].astype(object) for i, name in enumerate(names)},
                 np.asarray(_labels(len(numbers)), dtype=object))
