"""No data row in a failure file or a log line: a failure names the row and the column, and quotes at most the
one offending value. Every failure case of tests/jobs.py runs, plus data whose rows reach messages as a
single value (a file separated by ';', a JSON string or a nested array holding a whole row)."""

from __future__ import annotations

import json
import logging
import pathlib
import re

import pytest

from container.errors import EXIT_USER_ERROR
from container.paths import SageMakerPaths
from container.train import run
from model.errors import shown
from tests.jobs import CARS_HEADER, CARS_LINES, FAILURE_CASES, SMALL_CARS, Job, lay_out_job

TOKEN = re.compile(r"[A-Za-z0-9_.+-]+")
WINDOW = 3   # this many consecutive values of one row make a leak

ROWS = CARS_LINES[:30]
NAMES = CARS_HEADER.strip().split(",")
PRIVACY_CASES: dict[str, Job] = {
    "file separated by ';'": Job(channels={"train": {"cars.csv": SMALL_CARS.replace(",", ";")}}),
    "JSON string holding a row": Job(channels={"train": {"cars.jsonl": "".join(
        json.dumps(dict(zip(NAMES, row.strip().split(","), strict=True))) + "\n" for row in ROWS[:5])
        + json.dumps(ROWS[5].strip()) + "\n"}}),
    "nested array holding a row": Job(channels={"train": {"cars.jsonl": "".join(
        json.dumps(row.strip().split(",")) + "\n" for row in ROWS[:5]) + json.dumps([ROWS[5].strip().split(",")])
        + "\n"}}),
    "row of words in the target": Job(channels={"train": {"cars.csv": CARS_HEADER + "".join(ROWS[:9]) + '"'
                                                          + ROWS[9].strip() + '"' + ",1" * 23 + "\n"}}),
}
CASES = {**{name: job for name, (job, _) in FAILURE_CASES.items()}, **PRIVACY_CASES}


def _data_rows(job: Job) -> list[list[str]]:
    """Every data line of the job's files as its tokens (CSV headers are names, not data, and left out)."""
    rows = []
    for files in job.channels.values():
        for name, content in files.items():
            if isinstance(content, bytes):
                continue   # a damaged gzip: no readable row to leak
            lines = content.splitlines()
            rows += [TOKEN.findall(line) for line in (lines[1:] if name.endswith(".csv") else lines)]
    return rows


def _leaks(text: str, rows: list[list[str]]) -> list[str]:
    """The lines of `text` that hold WINDOW consecutive values of one data row, in order."""
    windows = {tuple(row[i:i + WINDOW]) for row in rows for i in range(len(row) - WINDOW + 1)}
    leaking = []
    for line in text.splitlines():
        tokens = TOKEN.findall(line)
        if any(tuple(tokens[i:i + WINDOW]) in windows for i in range(len(tokens) - WINDOW + 1)):
            leaking.append(line)
    return leaking


def test_the_detector_finds_a_row_quoted_in_any_form() -> None:
    rows = [TOKEN.findall(ROWS[0])]
    assert _leaks(f"line 2: expected a number, got {ROWS[0].strip().replace(',', ';')!r}", rows)
    assert _leaks(f"nested value {json.dumps(ROWS[0].strip().split(','))[:40]}", rows)
    assert not _leaks("train/cars.csv line 18, column 'KM': expected a number, got 'lots'", rows)


def test_a_value_that_may_hold_a_row_is_described_not_quoted() -> None:
    assert shown("lots") == "'lots'"
    assert shown(ROWS[0].strip()).startswith(f"a {len(ROWS[0].strip())}-character value containing ','")
    assert shown("x" * 60) == "a 60-character value"


@pytest.mark.parametrize("case", CASES)
def test_failures_and_logs_hold_no_data_row(tmp_path: pathlib.Path, case: str, caplog: pytest.LogCaptureFixture,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    job = CASES[case]
    with caplog.at_level(logging.DEBUG):
        assert run(SageMakerPaths(lay_out_job(tmp_path, job)), environ={}) == EXIT_USER_ERROR
    failure = (tmp_path / "output/failure").read_text()
    output = capsys.readouterr()
    rows = _data_rows(job)
    assert failure.strip() and caplog.text   # something was said, and checked
    for text in (failure, caplog.text, output.out, output.err):
        assert not _leaks(text, rows)
