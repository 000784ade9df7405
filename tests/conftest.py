"""Shared fixtures: the used-car data as a Table, and small slices of it for fast tests."""

from __future__ import annotations

import csv
import pathlib

import pytest

from model.table import Table

ROOT = pathlib.Path(__file__).resolve().parent.parent
CARS_CSV = ROOT / "data" / "toyota_corolla.csv"


def read_cars(limit: int | None = None) -> Table:
    with CARS_CSV.open(newline="") as f:
        rows = list(csv.reader(f))
    body = rows[1 : None if limit is None else limit + 1]
    return Table.from_rows(rows[0], body)


@pytest.fixture(scope="session")
def cars() -> Table:
    return read_cars()


@pytest.fixture(scope="session")
def small_cars() -> Table:
    return read_cars(300)
