import numpy as np
import pytest

from model.errors import DataError
from model.preprocessing import Preprocessor, fit_preprocessor, target_values
from model.schema import Kind, as_float_column, canonical_category, infer_schema, is_missing
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



@pytest.mark.parametrize("transform", ["none", "log"])
def test_one_prediction_decodes_to_the_same_bits_alone_as_in_a_batch(transform: str) -> None:
    """A single-row request takes decode_target's one-value form; a price must not depend on its company."""
    _, pre = _fit([[1000, 1, "a"], [20000, 2, "b"], [3000, 3, "a"]], transform)
    scaled = np.random.default_rng(0).normal(0, 4, 5000).astype(np.float32)
    scaled[:4] = [np.float32(1e30), np.float32(-1e30), np.nan, np.inf]   # beyond exp's range, not finite
    batch = pre.decode_target(scaled)
    alone = np.concatenate([pre.decode_target(scaled[i:i + 1]) for i in range(len(scaled))])
    assert alone.dtype == batch.dtype == np.float64
    assert alone.tobytes() == batch.tobytes()
    assert np.isfinite(batch[4:]).all() and not np.isfinite(batch[[2, 3]]).any()
    if transform == "log":
        assert batch[0] == np.inf and batch[1] == 0

def test_missing_target_is_an_error_naming_the_row() -> None:
    with pytest.raises(DataError) as caught:
        _fit([[10, 1, "a"], ["", 2, "b"]])
    assert caught.value.row == "row 2" and caught.value.column == "price"


@pytest.mark.parametrize(("cells", "message", "row"), [
    ([10, None, 30], "target value is missing", "row 2"),
    (["10", "  ", "30"], "target value is missing", "row 2"),
    (["ten", 20, None], "target value is missing", "row 3"),   # a missing value is named before a word
    (["10", "ten", "30"], "expected a number", "row 2"),
    ([10.0, 20.0, float("nan")], "not a finite number", "row 3"),
    (["10", "inf", "30"], "not a finite number", "row 2"),
])
def test_a_bad_target_value_is_refused_by_row(cells: list[object], message: str, row: str) -> None:
    table = Table({"price": np.array(cells, dtype=object)})
    with pytest.raises(DataError, match=message) as caught:
        target_values(table, "price")
    assert caught.value.row == row and caught.value.column == "price"


def test_target_values_read_cells_and_numeric_arrays_alike() -> None:
    cells = Table({"price": np.array(["10", 20, 30.5, True], dtype=object)})
    numbers = Table({"price": np.array([10, 20, 30.5, 1])})
    np.testing.assert_array_equal(target_values(cells, "price"), [10, 20, 30.5, 1])
    np.testing.assert_array_equal(target_values(numbers, "price", "log"), [10, 20, 30.5, 1])


def _block_encoding(pre: Preprocessor, table: Table) -> np.ndarray:
    """The encoding Preprocessor.encode replaced (one block per feature, np.eye for one-hot), kept as the
    reference the index-based encoding must match bit for bit."""
    blocks = []
    for feature in pre.schema.features:
        if feature.kind is Kind.NUMERIC:
            mean, std = pre.numeric[feature.name]
            values = as_float_column(table, feature.name)
            blocks.append(np.where(np.isnan(values), 0.0, (values - mean) / std)[:, None])
        else:
            levels = pre.categories[feature.name]
            index = {level: slot for slot, level in enumerate(levels, start=1)}
            slots = np.array([0 if is_missing(cell) else index.get(canonical_category(cell), 0)
                              for cell in table.columns[feature.name]], dtype=np.int64)
            blocks.append(np.eye(1 + len(levels), dtype=np.float64)[slots])
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _mixed_preprocessor() -> tuple[Preprocessor, list[str]]:
    rng = np.random.default_rng(3)
    names = ["price", "km", "color", "age", "code", "hp"]
    rows: list[list[object]] = [[float(rng.uniform(1, 9)), float(rng.normal(5e4, 2e4)), f"c{rng.integers(40)}",
                                 int(rng.integers(1, 80)), int(rng.integers(0, 4)), float(rng.normal(100, 9))]
                                for _ in range(300)]
    table = Table.from_rows(names, rows)
    schema = infer_schema(table, "price", categorical_columns=["code"])
    return fit_preprocessor(table, schema, "log"), names[1:]


def test_index_based_one_hot_equals_the_block_encoding_bit_for_bit() -> None:
    pre, names = _mixed_preprocessor()
    rows: list[list[object]] = [
        [1.5e4, "c3", 12, 1, 99.5],              # seen levels
        ["2e4", "c999", "13", "1", " 101 "],     # unseen level, numbers as text with spaces
        [None, None, "", None, None],            # every kind of missing value
        ["", "  ", 7, 1.0, 80],                  # blank text is missing; 1.0 is level "1"
        [3, " c3 ", True, True, 0],              # stripped level, bool as number and as level "1"
        [-0.0, "c0", 1, "1", 1e30],             # -0.0, the level "1" spelled as text
        [1, float("nan"), 2, 2.5, 3],            # NaN as a category is the level "nan" (unknown)
    ]
    table = Table.from_rows(names, rows)
    np.testing.assert_array_equal(pre.encode(table), _block_encoding(pre, table))
    assert pre.encode(table).dtype == np.float32
    for i in range(len(rows)):   # one row at a time too, as the serving fast path sends them
        one = table.take(np.array([i]))
        np.testing.assert_array_equal(pre.encode(one), _block_encoding(pre, one))


def test_index_based_encoding_matches_on_many_rows_and_levels() -> None:
    pre, names = _mixed_preprocessor()
    rng = np.random.default_rng(4)
    rows = [[float(rng.normal(5e4, 2e4)), f"c{rng.integers(60)}", int(rng.integers(1, 80)), int(rng.integers(0, 6)),
             str(rng.normal(100, 9))] for _ in range(5000)]
    table = Table.from_rows(names, rows)
    np.testing.assert_array_equal(pre.encode(table), _block_encoding(pre, table))


@pytest.mark.parametrize("bad", ["nan", "inf", "abc", float("inf")])
def test_index_based_encoding_refuses_what_the_block_encoding_refused(bad: object) -> None:
    pre, names = _mixed_preprocessor()
    table = Table.from_rows(names, [[1, "c1", 2, 1, 3], [2, "c2", None, 1, bad], [bad, "c2", 2, 1, 3]])
    with pytest.raises(DataError) as ours:
        pre.encode(table)
    with pytest.raises(DataError) as reference:
        _block_encoding(pre, table)
    assert (str(ours.value), ours.value.row, ours.value.column) == \
        (str(reference.value), reference.value.row, reference.value.column) == (str(ours.value), "row 3", "km")
