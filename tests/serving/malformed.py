"""A seeded corpus of malformed /invocations requests, for the abuse tests (tests/serving/test_abuse.py
in process, tests/container/test_serve_faults.py against the container) and scripts/reliability.

    requests = malformed_requests(count=2000, seed=0)     # the same list for the same arguments
    for case in requests: post(case.content_type, case.body, case.headers())

Every case is something a client must fix: the server answers each with a 4xx and keeps running; none
may ever be a 5xx. The families (`Malformed.family`) cover random bytes, truncated and deeply nested JSON,
huge numbers, NaN and infinity, wrong types, wrong feature names (including a header naming 100,000
columns), single huge lines, invalid UTF-8, wrong and missing content types and Accept headers,
header-only and empty CSV, broken .npy arrays and abusive custom attributes. Most bodies are small (the
corpus posts in seconds); `huge` cases (a few MiB each) are capped at HUGE_CASES.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tests.serving.requests_data import FEATURES, NAMES, ROWS, csv_body, records, typed

TARGET = NAMES[0]
MIB = 1024 * 1024
HUGE_CASES = 12      # bodies of megabytes: enough to cover the limits, few enough to stay fast
CSV, JSON, JSONLINES, NPY = "text/csv", "application/json", "application/jsonlines", "application/x-npy"
BODY_TYPES = (CSV, JSON, JSONLINES, NPY)


@dataclass(frozen=True)
class Malformed:
    family: str
    description: str
    content_type: str | None          # None: no Content-Type header at all
    body: bytes
    accept: str | None = None
    attributes: str | None = None     # X-Amzn-SageMaker-Custom-Attributes

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        if self.accept is not None:
            headers["Accept"] = self.accept
        if self.attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = self.attributes
        return headers


Family = Callable[[random.Random], Malformed]


def _rows(rng: random.Random, most: int = 5) -> list[list[str]]:
    return [list(rng.choice(ROWS)) for _ in range(rng.randint(1, most))]


def _valid_body(rng: random.Random) -> tuple[str, bytes]:
    rows = _rows(rng)
    lists = [[typed(cell) for cell in row] for row in rows]
    choices = [
        (CSV, csv_body(rows)),
        (CSV, csv_body(rows, FEATURES)),
        (JSON, json.dumps({"instances": lists})),
        (JSON, json.dumps({"instances": records(rows)})),
        (JSON, json.dumps({"dataframe_split": {"columns": FEATURES, "data": lists}})),
        (JSONLINES, "".join(json.dumps(row) + "\n" for row in lists)),
    ]
    content_type, text = rng.choice(choices)
    return content_type, text.encode()


def random_bytes(rng: random.Random) -> Malformed:
    size = rng.choice([1, 2, 7, 64, 500, 4096, 30_000])
    return Malformed("random bytes", f"{size} random bytes", rng.choice(BODY_TYPES), rng.randbytes(size))


def truncated_json(rng: random.Random) -> Malformed:
    content_type, body = _valid_body(rng)
    while content_type == CSV:
        content_type, body = _valid_body(rng)
    cut = rng.randint(1, len(body) - 2)
    return Malformed("truncated JSON", f"{content_type} cut at byte {cut} of {len(body)}", content_type, body[:cut])


def deep_json(rng: random.Random) -> Malformed:
    depth = rng.choice([40, 1_000, 10_000, 100_000])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}"), ('{"instances":[', "]}")])
    document = opening * depth + "1" + closing * depth
    shapes = {
        JSON: document,
        JSONLINES: json.dumps(ROWS[0]) + "\n" + document + "\n",
        "instance": json.dumps({"instances": [["1"] * (len(FEATURES) - 1) + ["x"]]})[:-3] + document + "]]}",
    }
    shape = rng.choice(list(shapes))
    content_type = JSON if shape == "instance" else shape
    return Malformed("deep JSON", f"{shape} nested {depth} deep", content_type, shapes[shape].encode())


HUGE_NUMBERS = ["1e999", "-1e999", "1e309", "9" * 5_000, "-" + "9" * 4_000, "1" + "0" * 400,
                "1" * 100_000, "1e99999999999999999999", "0x1p9999", "1e+", "--1", "1e1e1"]
NON_FINITE_JSON = ["NaN", "Infinity", "-Infinity", '"NaN"', '"inf"', '"-Infinity"', '"1e999"']
NON_FINITE_CSV = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999", "+nan", "nan(123)"]
NUMERIC = [name for name in FEATURES if name not in ("Fuel_Type", "Color")]


def _with_cell(rng: random.Random, value_csv: str, value_json: str) -> tuple[str, bytes]:
    """A valid 1-3 row body with one numeric feature replaced, in a random format."""
    rows = _rows(rng, 3)
    index = FEATURES.index(rng.choice(NUMERIC))
    row = rng.randrange(len(rows))
    kind = rng.choice([CSV, JSON, JSONLINES])
    if kind == CSV:
        rows[row][index] = value_csv
        return CSV, csv_body(rows).encode()
    lists = [[json.dumps(typed(cell)) for cell in r] for r in rows]
    lists[row][index] = value_json
    texts = ["[" + ",".join(cells) + "]" for cells in lists]
    if kind == JSON:
        return JSON, ('{"instances": [' + ",".join(texts) + "]}").encode()
    return JSONLINES, "".join(text + "\n" for text in texts).encode()


def huge_number(rng: random.Random) -> Malformed:
    number = rng.choice(HUGE_NUMBERS)
    content_type, body = _with_cell(rng, number, number)
    return Malformed("huge numbers", f"{number[:12]}... ({len(number)} chars) in {content_type}", content_type, body)


def non_finite(rng: random.Random) -> Malformed:
    content_type, body = _with_cell(rng, rng.choice(NON_FINITE_CSV), rng.choice(NON_FINITE_JSON))
    return Malformed("NaN and infinity", f"a non-finite number in {content_type}", content_type, body)


WRONG_CELLS = ["{}", "[]", "[1, 2]", '{"a": 1}', '"twenty"', "[[[]]]", '"\\u0000"', '"1e999"', '"-"']
WRONG_DOCUMENTS = ["1", "null", "true", '"instances"', "[]", "{}", '{"instances": {}}', '{"instances": "x"}',
                   '{"instances": 5}', '{"instances": [1, 2]}', '{"instances": [null]}', '{"instances": [[]]}',
                   '{"dataframe_split": []}', '{"dataframe_split": {"columns": 5, "data": []}}',
                   '{"dataframe_split": {"columns": ["KM"], "data": [[1, 2]]}}',
                   '{"dataframe_split": {"data": "x"}}', '{"dataframe_records": [1]}',
                   '{"instances": [], "dataframe_records": []}', '{"predictions": [1]}']


def wrong_type(rng: random.Random) -> Malformed:
    if rng.random() < 0.5:
        document = rng.choice(WRONG_DOCUMENTS)
        content_type = rng.choice([JSON, JSONLINES])
        return Malformed("wrong types", f"{content_type} {document[:30]}", content_type, document.encode())
    cell = rng.choice(WRONG_CELLS)
    content_type, body = _with_cell(rng, cell.replace(",", ";"), cell)
    if content_type == CSV and rng.random() < 0.5:   # a word where a number belongs
        content_type, body = _with_cell(rng, rng.choice(["lots", "12km", "1,5", "--3", "0x10"]), '"x"')
    return Malformed("wrong types", f"{cell} as a value in {content_type}", content_type, body)


def wrong_names(rng: random.Random) -> Malformed:
    rows = _rows(rng, 2)
    names = list(FEATURES)
    variant = rng.choice(["unknown", "target", "empty", "long", "unicode", "duplicate", "missing", "many"])
    if variant == "many":   # far more columns than features: must be refused in linear time
        count = rng.choice([2_000, 100_000])
        header = ",".join(f"c{i}" for i in range(count))
        body = header + "\n" + ",".join("1" for _ in range(count)) + "\n"
        if rng.random() < 0.5:
            body = json.dumps({"dataframe_split": {"columns": [f"c{i}" for i in range(count)],
                                                   "data": [[1] * count]}})
            return Malformed("wrong names", f"dataframe_split with {count} columns", JSON, body.encode())
        return Malformed("wrong names", f"a CSV header of {count} columns", "text/csv; header=present",
                         body.encode())
    index = rng.randrange(len(names))
    replacement = {"unknown": "Doorz", "target": TARGET, "empty": "", "long": "x" * 5_000,
                   "unicode": "Äge_\u202e\U0001f697", "duplicate": names[(index + 1) % len(names)],
                   "missing": None}[variant]
    kind = rng.choice([CSV, JSON, JSONLINES])
    if kind == CSV:
        header = [name for name in names if name != names[index] or replacement is not None]
        header = [replacement if name == names[index] and replacement is not None else name for name in header]
        data = [[cell for j, cell in enumerate(row) if j != index or replacement is not None] for row in rows]
        body = ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in data)
        return Malformed("wrong names", f"CSV header: {variant} name", "text/csv; header=present", body.encode())
    objects = []
    for record in records(rows):
        value = record.pop(names[index])
        if replacement is not None:
            record[replacement] = value
        objects.append(record)
    if kind == JSON:
        return Malformed("wrong names", f"JSON objects: {variant} name", JSON,
                         json.dumps({rng.choice(["instances", "dataframe_records"]): objects}).encode())
    return Malformed("wrong names", f"JSON Lines objects: {variant} name", JSONLINES,
                     "".join(json.dumps(o) + "\n" for o in objects).encode())


def huge_line(rng: random.Random) -> Malformed:
    """One line of megabytes: refused by the line limit, or by the payload limit beyond 6 MiB."""
    size = rng.choice([MIB + 10, 3 * MIB, 6 * MIB - 100, 6 * MIB + 100])
    kind = rng.choice([CSV, JSONLINES, JSON])
    if kind == CSV:
        body = (b"1," * (size // 2))[:size]
    elif kind == JSONLINES:
        body = b"[" + b"1," * (size // 2 - 1) + b"1]"
    else:
        body = b'{"instances": [["' + b"x" * size + b'"]]}'
    return Malformed("huge line", f"{kind}: one line of {len(body)} bytes", kind, body)


INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80",
                b"\xc0\xaf", b"\xf4\x90\x80\x80"]


def invalid_utf8(rng: random.Random) -> Malformed:
    content_type, body = _valid_body(rng)
    at = rng.randrange(len(body))
    bad = rng.choice(INVALID_UTF8)
    body = body[:at] + bad + body[at:]
    if rng.random() < 0.3:
        content_type = f"{content_type}; charset={rng.choice(['utf-8', 'UTF-8', 'utf-16', 'utf-32', 'ascii'])}"
    return Malformed("invalid UTF-8", f"{bad!r} at byte {at} of {content_type}", content_type, body)


CONTENT_TYPES = [None, "", "text/plain", "application/xml", "multipart/form-data; boundary=x",
                 "application/x-www-form-urlencoded", "application/octet-stream", "text/csv; charset=bogus",
                 "text/csv; header=maybe", "*/*", "text/*", "image/png", "text/csv/json", "csv", "json",
                 "application/jsonlines; charset=x-unknown", "application/x-npy; x=1"]


def wrong_content_type(rng: random.Random) -> Malformed:
    _, body = _valid_body(rng)
    content_type = rng.choice(CONTENT_TYPES)
    return Malformed("wrong content types", f"Content-Type {content_type!r}", content_type, body)


ACCEPTS = ["application/xml", "text/csv;q=0", "garbage", "*/*;q=0", "text/html", "application/x-npy",
           "image/*", "text/csv;q=abc, application/xml", "application/json;q=0, text/csv;q=0, */*;q=0"]


def wrong_accept(rng: random.Random) -> Malformed:
    content_type, body = _valid_body(rng)
    accept = rng.choice(ACCEPTS)
    return Malformed("wrong Accept", f"Accept {accept!r}", content_type, body, accept=accept)


def header_only(rng: random.Random) -> Malformed:
    header = ",".join(FEATURES)
    body = rng.choice([header + "\n", header, header + "\n\n\n", "\ufeff" + header + "\r\n", "\n", "\n\n\n",
                       " ", "\r\n", "", "\ufeff", "\t\n", ",\n", "\ufeff\n\n"])
    content_type = rng.choice([CSV, "text/csv; header=present", "text/csv; header=absent"])
    return Malformed("header-only or empty CSV", f"{body[:30]!r} as {content_type}", content_type, body.encode())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape: str, dtype: str = "<f8") -> bytes:
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - len(text) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + b"\x00" * 16


def bad_npy(rng: random.Random) -> Malformed:
    width = len(NUMERIC)
    choices: list[tuple[str, bytes]] = [
        ("pickled objects", _npy(np.array([{"a": 1}, None], dtype=object))),
        ("3-D", _npy(np.zeros((2, 2, width)))),
        ("wrong width", _npy(np.zeros((3, width + 1)))),
        ("no rows", _npy(np.zeros((0, width)))),
        ("strings", _npy(np.array([["1"] * width]))),
        ("complex", _npy(np.zeros((1, width), dtype=complex))),
        ("scalar", _npy(np.float64(1.0))),
        ("NaN", _npy(np.full((1, width), np.nan))),
        ("declares 10^12 rows", _npy_header(f"({10**12}, {width})")),
        ("declares 2^62 values", _npy_header(f"({2**31}, {2**31})")),
        ("negative shape", _npy_header(f"(-1, {width})")),
        ("bad header", _npy_header("'(1,'")),
        ("unknown dtype", _npy_header(f"(1, {width})", "<q16")),
        ("object dtype header", _npy_header(f"(1, {width})", "|O")),
        ("npz archive", b"PK\x03\x04" + rng.randbytes(100)),
        ("magic only", b"\x93NUMPY"),
        ("truncated", _npy(np.zeros((50, width)))[:100]),
    ]
    name, body = rng.choice(choices)
    return Malformed(".npy arrays", name, NPY, body)


def bad_attributes(rng: random.Random) -> Malformed:
    content_type, body = _valid_body(rng)
    attributes = rng.choice(["a=" + "x" * 2_000, "=" * 1_025, ";" * 1_100, "k=v," * 300])
    return Malformed("custom attributes", f"{len(attributes)} characters", content_type, body,
                     attributes=attributes)


FAMILIES: Sequence[Family] = (random_bytes, truncated_json, deep_json, huge_number, non_finite, wrong_type,
                              wrong_names, invalid_utf8, wrong_content_type, wrong_accept, header_only,
                              bad_npy, bad_attributes)


def malformed_requests(count: int = 2000, seed: int = 0) -> list[Malformed]:
    """`count` cases, the families in turn (each varied by its own seeded draw), plus HUGE_CASES huge lines."""
    rng = random.Random(seed)
    cases = [FAMILIES[i % len(FAMILIES)](rng) for i in range(count - HUGE_CASES)]
    cases += [huge_line(rng) for _ in range(HUGE_CASES)]
    return cases
