import numpy as np
import pytest

from model.errors import DataError
from model.preprocessing import fit_preprocessor
from model.schema import infer_schema
from model.table import Table


def _fit(rows: list[list[object]], transform: str = "none") -> tuple[Table, object]:
    table = Table.from_rows(["price", "km", "color"], rows)
    return table, fit_preprocessor(table, infer_schema(table, None), transform)


def test_numeric_features_are_standardised_with_training_statistics() -> None:
    table, pre = _fit([[10, 1, "red"], [20, 2, "blue"], [30, 3, "red"]])
    encoded = pre.encode(table.without("price"))
    assert encoded.shape == (3, 1 + 3)           # km + (unknown, blue, red)
    np.testing.assert_allclose(encoded[:, 0], [-1.2247449, 0, 1.2247449], rtol=1e-6)


def test_unseen_and_missing_values_have_a_defined_encoding() -> None:
    _, pre = _fit([[10, 1, "red"], [20, 2, "blue"], [30, 3, "red"]])
    new = Table.from_rows(["km", "color"], [[None, "green"], ["", None], [2, "blue"]])
    encoded = pre.encode(new)
    assert encoded[0, 0] == 0 and encoded[1, 0] == 0    # missing number -> training mean
    np.testing.assert_array_equal(encoded[0, 1:], [1, 0, 0])   # unseen level -> unknown slot
    np.testing.assert_array_equal(encoded[1, 1:], [1, 0, 0])   # missing level -> unknown slot
    np.testing.assert_array_equal(encoded[2, 1:], [0, 1, 0])


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "abc"])
def test_non_finite_or_non_numeric_values_are_refused_by_row(bad: str) -> None:
    _, pre = _fit([[10, 1, "red"], [20, 2, "blue"]])
    with pytest.raises(DataError) as caught:
        pre.encode(Table.from_rows(["km", "color"], [[1, "red"], [bad, "red"]]))
    assert caught.value.row == "row 2" and caught.value.column == "km"


def test_log_target_round_trips_and_refuses_non_positive_prices() -> None:
    table, pre = _fit([[100, 1, "a"], [1000, 2, "b"], [10000, 3, "a"]], "log")
    np.testing.assert_allclose(pre.decode_target(pre.encode_target(table)), [100, 1000, 10000], rtol=1e-5)
    with pytest.raises(DataError, match="positive"):
        _fit([[0, 1, "a"], [10, 2, "b"]], "log")


def test_missing_target_is_an_error_naming_the_row() -> None:
    with pytest.raises(DataError) as caught:
        _fit([[10, 1, "a"], ["", 2, "b"]])
    assert caught.value.row == "row 2" and caught.value.column == "price"
