"""The columnar CSV decoder (container/serving/csvcolumns.py, codecs._decode_csv_columnar) against the
csv-module path it stands in for: on random tables, clean or broken, with or without a header, the two
give the same answer bit for bit or the same error (status, message, row, feature). The size threshold
is moved so that every body goes through one path or the other."""

from __future__ import annotations

import csv
import io
import random
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from container.serving import codecs, csvcolumns
from container.serving.predictor import Predictor
from model.regressor import Regressor
from tests.serving.requests_data import FEATURES, ROWS, csv_body

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALWAYS, NEVER = 0, 1 << 62

ODD_NUMBERS = ["", " ", "  7 ", "1_000", "nan", "inf", "-inf", "-0", "+5", ".5", "5.", "-.5", "abc", "1e999",
               "\t1", "0x10", "007", "1.2.3", "-", "1e5", "1E-3", " -2.50", "9" * 16, "0." + "1" * 20, "12 km"]
NUMBERS = (st.integers(-10**9, 10**9).map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
           | st.from_regex(r"[+-]?[0-9]{0,17}(\.[0-9]{0,8})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
           | st.sampled_from(ODD_NUMBERS))
WORDS = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters=',"'), max_size=8)
MUTATIONS = ["none", "none", "none", "crlf", "empty line", "short row", "quote", "non-ascii", "bom", "lone cr",
             "nul", "trailing newlines", "leading newline", "long cell"]
PARAMS = [{}, {}, {"header": "present"}, {"header": "absent"}, {"charset": "latin-1"}, {"charset": "UTF-8"},
          {"header": "maybe"}]


def _outcome(predictor: Predictor, body: bytes, params: dict[str, str], threshold: int,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    monkeypatch.setattr(codecs, "COLUMNAR_MIN_BYTES", threshold)
    try:
        answer = predictor.answer(body, "text/csv", params, "application/json")
    except HTTPException as error:
        return ("error", error.code, error.description, getattr(error, "row", None), getattr(error, "feature", None))
    return ("ok", answer.body, answer.rows, answer.content_type)


def _same_either_way(predictor: Predictor, body: bytes, params: dict[str, str],
                     monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    generic = _outcome(predictor, body, params, NEVER, monkeypatch)
    columnar = _outcome(predictor, body, params, ALWAYS, monkeypatch)
    assert columnar == generic, body[:500]
    return generic


@st.composite
def tables(draw: st.DrawFn, predictor: Predictor) -> tuple[bytes, dict[str, str]]:
    names = list(predictor.schema.feature_names)
    numeric = predictor.schema.numeric_features
    clean = draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        source = ROWS[draw(st.integers(0, len(ROWS) - 1))]
        row = []
        for name, cell in zip(names, (source[FEATURES.index(name)] for name in names), strict=True):
            if clean or draw(st.integers(0, 4)):
                row.append(cell)
            else:
                row.append(draw(NUMBERS if name in numeric else WORDS | NUMBERS))
        rows.append(row)
    header: list[str] | None = None
    if draw(st.booleans()):
        header = draw(st.permutations(names))
        if draw(st.integers(0, 5)) == 0:
            header[0] = draw(st.sampled_from([" " + header[0] + " ", "Price", "unknown", header[-1]]))
    order = [names.index(name) if name in names else 0 for name in header] if header else range(len(names))
    lines = ([",".join(header)] if header else []) + [",".join(row[i] for i in order) for row in rows]
    text = "\n".join(lines) + "\n"
    mutation = draw(st.sampled_from(MUTATIONS))
    at = draw(st.integers(0, max(0, len(text) - 2)))
    first = text.find("\n") + 1
    text = {"crlf": text.replace("\n", "\r\n"), "empty line": text[:first] + "\n" + text[first:],
            "short row": text.replace(",", "", 1), "quote": text[:at] + '"' + text[at:],
            "non-ascii": text[:at] + "é" + text[at:], "bom": "\ufeff" + text, "lone cr": text.replace("\n", "\r", 1),
            "nul": text[:at] + "\x00" + text[at:], "trailing newlines": text + "\n\r\n",
            "leading newline": "\n" + text, "long cell": text.replace(",", "," + "1" * 300 + ",", 1)
            }.get(mutation, text)
    return text.encode(), draw(st.sampled_from(PARAMS))


@pytest.fixture(params=["mixed", "numeric"])
def predictor(request: pytest.FixtureRequest) -> Predictor:
    regressor: Regressor = request.getfixturevalue(f"{request.param}_model")
    return Predictor(regressor)


@PROPERTY
@given(data=st.data())
def test_the_columnar_decoder_answers_as_the_csv_module_does(predictor: Predictor, data: st.DataObject,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    body, params = data.draw(tables(predictor))
    _same_either_way(predictor, body, params, monkeypatch)


def test_a_large_plain_body_takes_the_columnar_path(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    names = predictor.schema.feature_names
    rows = [[row[FEATURES.index(name)] for name in names] for row in ROWS] * 200
    body = csv_body(rows, features=names).encode()
    assert len(body) >= codecs.COLUMNAR_MIN_BYTES
    assert codecs._decode_csv_columnar(body, {}, predictor.schema) is not None
    assert _same_either_way(predictor, body, {}, monkeypatch)[0] == "ok"
    header = csv_body(rows, header=list(reversed(names)), features=names).encode()
    assert codecs._decode_csv_columnar(header, {}, predictor.schema) is not None
    assert _same_either_way(predictor, header, {}, monkeypatch)[0] == "ok"


def test_numbers_are_float_of_the_text_bit_for_bit() -> None:
    rng = random.Random(0)
    texts = [str(rng.randint(-10**14, 10**14)) for _ in range(500)]
    texts += [f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}" for _ in range(500)]
    texts += [repr(rng.uniform(-1e300, 1e300)) for _ in range(200)] + ["-0", "+7", ".5", "5.", "007", " 3 ", "1_0"]
    texts += [repr(struct.unpack("d", struct.pack("Q", rng.getrandbits(62)))[0]) for _ in range(200)]
    texts = [text for text in texts if np.isfinite(float(text))]
    fields = csvcolumns.split(("\n".join(texts) + "\n").encode())
    assert fields is not None
    values = fields.numbers(0)
    assert values is not None
    assert [struct.pack("d", v) for v in values.tolist()] == [struct.pack("d", float(t)) for t in texts]


@pytest.mark.parametrize("cell", ["", " ", "abc", "nan", "inf", "1e999", "\t", "1.2.3"])
def test_a_number_column_with_a_missing_or_bad_cell_is_left_as_text(cell: str) -> None:
    fields = csvcolumns.split(f"1\n{cell}\n2\n".encode().replace(b"\n\n", b"\n \n"))
    assert fields is not None
    assert fields.numbers(0) is None
    strings = fields.strings(0)
    assert strings is not None and strings[0] == "1"


@pytest.mark.parametrize("body", [b'1,"2"\n', b"1,2\n\n3,4\n", b"1,2\n3\n", b"\xc3\xa9,1\n", b"1,2\r3,4\n",
                                  b"1,\x002\n", b"\n1,2\n", b"1," + b"9" * 300 + b"\n"])
def test_anything_unusual_is_left_to_the_csv_module(body: bytes) -> None:
    fields = csvcolumns.split(body)
    assert fields is None or fields.strings(1) is None


CELLS = st.text(alphabet="0123456789.-+e _ab\t", max_size=10) | st.integers(0, 10 ** 16).map(str)


@settings(max_examples=400, deadline=None)
@given(rows=st.lists(st.lists(CELLS, min_size=1, max_size=4), min_size=1, max_size=8),
       ending=st.sampled_from(["", "\n", "\n\n", "\r\n", "\n\r\n"]), crlf=st.booleans(),
       odd=st.sampled_from(["", "empty line", "leading newline", "lone cr", "quote"]))
def test_split_gives_the_cells_csv_reader_gives(rows: list[list[str]], ending: str, crlf: bool, odd: str) -> None:
    """Any width, single columns included (where an empty line is a cell count of one, not of zero):
    whatever split accepts, its strings are csv.reader's cells and its numbers float() of them."""
    width = len(rows[0])
    lines = [",".join((row + [""] * width)[:width]) for row in rows]
    if odd == "empty line":
        lines.insert(len(lines) // 2, "")
    text = ("\n" if odd == "leading newline" else "") + "\n".join(lines) + ending
    text = text.replace("\n", "\r\n") if crlf else text
    text = text.replace("1", "\r", 1) if odd == "lone cr" else text.replace("a", '"', 1) if odd == "quote" else text
    fields = csvcolumns.split(text.encode())
    if fields is None:
        return
    expected = list(csv.reader(io.StringIO(text.rstrip("\r\n")), strict=True))
    assert fields.lines == len(expected) and all(len(row) == fields.width for row in expected)
    for first_row in {0, min(1, fields.lines - 1)}:
        for column in range(fields.width):
            cells = [row[column] for row in expected[first_row:]]
            strings = fields.strings(column, first_row)
            assert strings is not None and strings.tolist() == cells
            numbers = fields.numbers(column, first_row)
            if all(cell.isdigit() and len(cell) <= 15 for cell in cells):
                assert numbers is not None
            if numbers is not None:
                assert [struct.pack("d", v) for v in numbers.tolist()] == [struct.pack("d", float(c)) for c in cells]
    assert fields.line(0) == expected[0]


def test_short_and_long_category_cells_and_missing_ones() -> None:
    """Cells of up to eight bytes are told apart as integers, longer ones as byte strings; both give
    every distinct text once, empty cells as ""."""
    words = ["", "a", "Petrol", "12345678", "123456789", "CNG", "Diesel", "a b", "x" * 40]
    rows = [[words[i % len(words)], words[(i * 7) % 4]] for i in range(200)]
    fields = csvcolumns.split(("\n".join(",".join(row) for row in rows) + "\n").encode())
    assert fields is not None
    for column in (0, 1):
        strings = fields.strings(column)
        assert strings is not None and strings.tolist() == [row[column] for row in rows]
