import pytest

from model.errors import DataError
from model.schema import Kind, canonical_category, infer_schema
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


def test_a_column_named_twice_is_refused_not_dropped() -> None:
    with pytest.raises(DataError) as caught:
        Table.from_rows(["price", "km", "km"], [["1", "2", "3"]])
    assert caught.value.column == "km"
