"""Table: the labels rows keep through take(), and what its fingerprint hashes."""

from __future__ import annotations

import hashlib

import numpy as np

from model.table import Table


def test_taken_rows_keep_the_labels_of_their_source_rows() -> None:
    table = Table({"a": np.array(["x", "y", "z", "w"], dtype=object)})
    taken = table.take(np.array([3, 1]))
    assert [taken.label(0), taken.label(1)] == ["row 4", "row 2"]
    assert list(taken.take(np.array([1])).labels()) == ["row 2"]
    assert list(table.take(np.array([False, True, False, True])).labels()) == ["row 2", "row 4"]
    labels = np.array(["f.csv line 2", "f.csv line 3"], dtype=object)
    labelled = Table({"a": np.array(["x", "y"], dtype=object)}, labels)
    assert list(labelled.take(np.array([1])).labels()) == ["f.csv line 3"]


def test_a_column_of_cells_is_fingerprinted_as_its_cells_reprs() -> None:
    # the bytes model/streaming.py also hashes for a streamed column: a change here is a change there
    table = Table({"price": np.array(["13500", None, 7.5], dtype=object), "fuel": np.array(["Diesel", "", 1],
                                                                                         dtype=object)})
    expected = hashlib.sha256(b"price\x1f'13500'\x1eNone\x1e7.5\x1efuel\x1f'Diesel'\x1e''\x1e1\x1e").hexdigest()
    assert table.fingerprint() == expected


def test_a_numeric_column_is_fingerprinted_by_its_values() -> None:
    values = np.random.default_rng(0).normal(size=1000)
    table = Table({"x": values})
    assert table.fingerprint() == Table({"x": values.copy()}, np.array(["l"] * 1000, dtype=object)).fingerprint()
    changed = values.copy()
    changed[500] = np.nextafter(changed[500], 1.0)
    assert Table({"x": changed}).fingerprint() != table.fingerprint()
    assert Table({"y": values}).fingerprint() != table.fingerprint()
    assert Table({"x": values.astype(np.float32)}).fingerprint() != table.fingerprint()
