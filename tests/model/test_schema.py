import math

import numpy as np
import pytest

from model.errors import DataError
from model.schema import Kind, as_float_column, canonical_category, category_levels, infer_schema
from model.table import Table


def test_inference_splits_numbers_from_words(small_cars: Table) -> None:
    schema = infer_schema(small_cars, None)
    kinds = {f.name: f.kind for f in schema.features}
    assert schema.target == "Price"           # the first column, SageMaker's convention
    assert "Price" not in kinds
    assert kinds["KM"] is Kind.NUMERIC and kinds["Age_08_04"] is Kind.NUMERIC
    assert kinds["Fuel_Type"] is Kind.CATEGORICAL and kinds["Color"] is Kind.CATEGORICAL
    assert schema.feature_names == [n for n in small_cars.names if n != "Price"]


def test_categorical_and_drop_columns_are_honoured(small_cars: Table) -> None:
    schema = infer_schema(small_cars, "Price", categorical_columns=["Met_Color"], drop_columns=["Doors"])
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds["Met_Color"] is Kind.CATEGORICAL
    assert "Doors" not in kinds


def test_unknown_target_lists_the_columns(small_cars: Table) -> None:
    with pytest.raises(DataError, match=r"target names column 'price'.*Price, Age_08_04"):
        infer_schema(small_cars, "price")


def test_a_stray_word_in_a_numeric_column_names_row_and_column() -> None:
    table = Table.from_rows(["y", "km"], [["1", "10"], ["2", "20"], ["3", "12 km"], ["4", "40"]])
    with pytest.raises(DataError) as caught:
        infer_schema(table, None)
    assert caught.value.row == "row 3" and caught.value.column == "km"
    assert "'12 km'" in str(caught.value)


def test_categories_have_one_spelling_across_formats() -> None:
    assert canonical_category(1) == canonical_category("1") == canonical_category(1.0) == canonical_category(" 1.0")
    assert canonical_category(" Blue ") == "Blue"
    assert canonical_category(True) == "1"


def test_a_numeric_column_with_gaps_is_numbers_and_nan() -> None:
    """Missing cells (empty, blank, None) are NaN; the present cells are converted together."""
    table = Table({"y": np.array(["1", "2", "3", "4", "5"], dtype=object),
                   "km": np.array(["10", "", " 2.5e3", None, "  "], dtype=object)})
    assert infer_schema(table, "y").features[0].kind is Kind.NUMERIC
    values = as_float_column(table, "km")
    assert values[0] == 10.0 and values[2] == 2500.0
    assert all(math.isnan(values[i]) for i in (1, 3, 4))


@pytest.mark.parametrize(("cell", "message"), [("nan", "not a finite number"), ("inf", "not a finite number"),
                                               ("12 km", "expected a number")])
def test_a_bad_value_among_gaps_is_named_by_row(cell: str, message: str) -> None:
    table = Table.from_rows(["y", "km"], [["1", "10"], ["2", ""], ["3", cell], ["4", "40"]])
    with pytest.raises(DataError, match=message) as caught:
        as_float_column(table, "km")
    assert caught.value.row == "row 3" and caught.value.column == "km"


def test_a_column_of_words_with_gaps_is_categorical() -> None:
    table = Table.from_rows(["y", "fuel"], [["1", "Diesel"], ["2", ""], ["3", "Petrol"], ["4", "CNG"]])
    assert infer_schema(table, "y").features[0].kind is Kind.CATEGORICAL


def test_a_column_has_one_level_per_spelling_of_a_category() -> None:
    cells = np.array([1, "1", 1.0, " 1.0", True, "Blue", " Blue ", None, "", "  ", 2.5, "2.50"], dtype=object)
    assert category_levels(cells) == {"1", "Blue", "2.5"}
    assert category_levels(cells) == {canonical_category(cell) for cell in cells if cell not in (None, "", "  ")}


def test_a_column_named_twice_is_refused_not_dropped() -> None:
    with pytest.raises(DataError) as caught:
        Table.from_rows(["price", "km", "km"], [["1", "2", "3"]])
    assert caught.value.column == "km"
