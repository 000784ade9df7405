"""fit_streaming(): the statistics of one pass equal fit_preprocessor's, the linear model is the exact least
squares solution, the MLP learns what fit() learns, bad cells fail by row, early stopping and stopping work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from model import streaming
from model.checkpointing import TrainingStopped
from model.config import TrainingConfig
from model.errors import DataError
from model.onehot_rows import OneHotRows
from model.preprocessing import Preprocessor, fit_preprocessor, target_values
from model.schema import infer_schema
from model.streaming import SAMPLE_ROWS, Passes, fit_streaming, held_out
from model.table import Table
from model.training import EpochReport, fit
from tests.conftest import read_cars

LINEAR = TrainingConfig(hidden_layers=())
MLP = TrainingConfig(hidden_layers=(32, 16), ensemble_size=2, epochs=25, patience=25, batch_size=64)


def chunked(table: Table, rows: int) -> Passes:
    """passes(k) over `table` in chunks of `rows` rows (the same chunks every pass)."""
    def passes(index: int) -> Iterator[Table]:
        for start in range(0, table.n_rows, rows):
            yield table.take(np.arange(start, min(start + rows, table.n_rows)))
    return passes


def with_cells(table: Table, column: str, changes: dict[int, object]) -> Table:
    values = table.columns[column].copy()
    for row, value in changes.items():
        values[row] = value
    return Table({**table.columns, column: values}, table.row_labels)


@pytest.fixture(scope="module")
def cars() -> Table:
    # a few holes, so that missing values take their own path through the statistics
    table = with_cells(read_cars(), "KM", {3: "", 50: None, 700: " "})
    return with_cells(table, "Fuel_Type", {10: "", 11: None})


@pytest.fixture(scope="module")
def split_cars(cars: Table) -> tuple[Table, Table, Table]:
    order = np.random.default_rng(5).permutation(cars.n_rows)
    return (cars.take(np.sort(order[500:])), cars.take(np.sort(order[250:500])), cars.take(np.sort(order[:250])))


def assert_same_preprocessor(ours: Preprocessor, theirs: Preprocessor) -> None:
    assert ours.schema == theirs.schema
    assert ours.categories == theirs.categories
    assert ours.numeric.keys() == theirs.numeric.keys()
    for name, (mean, std) in theirs.numeric.items():
        assert ours.numeric[name] == pytest.approx((mean, std), rel=1e-9, abs=1e-12), name
    assert ours.target_scale == pytest.approx(theirs.target_scale, rel=1e-9)
    assert ours.target_transform == theirs.target_transform


@pytest.mark.parametrize("config", [LINEAR, TrainingConfig(hidden_layers=(), categorical_columns=("Doors",),
                                                          target_transform="none", seed=3)],
                         ids=["defaults", "forced-categorical"])
def test_one_pass_statistics_equal_fit_preprocessor_on_the_training_rows(cars: Table, config: TrainingConfig) -> None:
    streamed = fit_streaming(chunked(cars, 97), config)
    training = cars.take(np.flatnonzero(~held_out(np.arange(cars.n_rows), config)))
    schema = infer_schema(cars, config.target, config.categorical_columns, config.drop_columns)
    assert_same_preprocessor(streamed.result.regressor.preprocessor,
                             fit_preprocessor(training, schema, config.target_transform))
    metrics = streamed.result.metrics
    assert metrics["train"]["rows"] == training.n_rows
    assert metrics["train"]["rows"] + metrics["validation"]["rows"] == cars.n_rows
    # about validation_fraction of the rows are held out, by a hash: no permutation of all rows
    assert abs(metrics["validation"]["rows"] / cars.n_rows - config.validation_fraction) < 0.03


def test_with_a_validation_channel_every_training_row_counts(split_cars: tuple[Table, Table, Table]) -> None:
    train, validation, test = split_cars
    streamed = fit_streaming(chunked(train, 128), LINEAR, validation=chunked(validation, 100),
                             test=chunked(test, 1000))
    schema = infer_schema(train, None)
    assert_same_preprocessor(streamed.result.regressor.preprocessor, fit_preprocessor(train, schema, "log"))
    assert {k: v["rows"] for k, v in streamed.result.metrics.items()} == {
        "train": train.n_rows, "validation": validation.n_rows, "test": test.n_rows}
    # the evaluation sample is the test split (all of it: it is below SAMPLE_ROWS), in row order
    assert streamed.split == "test" and streamed.sample.fingerprint() == test.fingerprint()
    assert streamed.train_sample.n_rows == min(train.n_rows, SAMPLE_ROWS)


@pytest.mark.parametrize("transform", ["none", "log"])
def test_the_linear_model_is_the_exact_least_squares_solution(split_cars: tuple[Table, Table, Table],
                                                              transform: str) -> None:
    train, validation, _ = split_cars
    config = TrainingConfig(hidden_layers=(), target_transform=transform)
    regressor = fit_streaming(chunked(train, 200), config, validation=chunked(validation, 200)).result.regressor
    preprocessor = regressor.preprocessor
    x = np.c_[preprocessor.encode(train).astype(np.float64), np.ones(train.n_rows)]
    values = target_values(train, "Price")
    mean, std = preprocessor.target_scale
    y = ((np.log(values) if transform == "log" else values) - mean) / std
    weights = np.linalg.lstsq(x, y, rcond=None)[0]
    layer = regressor.network.members[0][0]
    ours = np.r_[layer.weight.detach().double().numpy().ravel(), layer.bias.detach().double().numpy()]
    # the minimum-norm solution, as numpy's: the one-hot blocks are collinear with the bias
    assert np.abs(ours - weights).max() <= 1e-6 * np.abs(weights).max()
    with torch.inference_mode():
        fitted = regressor.network(torch.from_numpy(x[:, :-1].astype(np.float32))).double().numpy().ravel()
    assert np.abs(fitted - x @ weights).max() <= 1e-5 * np.abs(x @ weights).max()
    # and at least as good on its training rows as fit()'s L-BFGS, which approaches the same optimum
    in_memory = fit(train, config, validation)
    assert regressor.info["metrics"]["train"]["rmse"] <= in_memory.metrics["train"]["rmse"] * (1 + 1e-4)


def test_many_levels_are_summed_compact_to_the_in_memory_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 300-level feature: each chunk's sums come from compact rows (model/onehot_rows.py), never a dense
    float64 chunk, and the weights are fit()'s least squares on the same rows."""
    from tests.model.test_onehot_rows import _table

    train, validation = _table(3_000, 2), _table(600, 3)
    config = TrainingConfig(target="price", categorical_columns=("postcode",), hidden_layers=())
    summed: list[type] = []
    real = streaming.normal_equations

    def recording(x: Any, y: torch.Tensor, blocks: Any) -> tuple[torch.Tensor, torch.Tensor]:
        summed.append(type(x))
        return real(x, y, blocks)

    monkeypatch.setattr(streaming, "normal_equations", recording)
    streamed = fit_streaming(chunked(train, 700), config, validation=chunked(validation, 700)).result.regressor
    assert summed == [OneHotRows] * 5
    in_memory = fit(train, config, validation).regressor
    ours, theirs = (np.r_[layer.weight.detach().double().numpy().ravel(), layer.bias.detach().double().numpy()]
                    for layer in (streamed.network.members[0][0], in_memory.network.members[0][0]))
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_the_result_does_not_depend_on_the_chunking(cars: Table) -> None:
    small, large = (fit_streaming(chunked(cars, rows), LINEAR) for rows in (37, 5000))
    assert small.result.metrics["validation"]["rows"] == large.result.metrics["validation"]["rows"]
    # equal up to float rounding: the float64 sums are added in another order, the weights kept in float32
    assert small.result.metrics["train"]["rmse"] == pytest.approx(large.result.metrics["train"]["rmse"], rel=1e-6)
    assert small.result.regressor.info["data_fingerprint"] == large.result.regressor.info["data_fingerprint"]
    assert small.result.regressor.calibration is not None and large.result.regressor.calibration is not None
    assert small.result.regressor.calibration.residuals == pytest.approx(
        large.result.regressor.calibration.residuals, abs=1e-6)
    assert small.sample.fingerprint() == large.sample.fingerprint()


def test_the_mlp_learns_what_fit_learns(split_cars: tuple[Table, Table, Table]) -> None:
    train, validation, test = split_cars
    reports: list[EpochReport] = []
    streamed = fit_streaming(chunked(train, 300), MLP, validation=chunked(validation, 300), on_epoch=reports.append)
    in_memory = fit(train, MLP, validation)

    def rmse(regressor: object) -> float:
        predicted = regressor.predict(test.without("Price"))  # type: ignore[attr-defined]
        return float(np.sqrt(np.mean((predicted - target_values(test, "Price")) ** 2)))

    ours, theirs = rmse(streamed.result.regressor), rmse(in_memory.regressor)
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)
    assert [r.epoch for r in reports] == list(range(1, MLP.epochs + 1))
    regressor = streamed.result.regressor
    assert regressor.calibration is not None and len(regressor.calibration.residuals) == validation.n_rows
    assert regressor.baseline is not None and len(regressor.baseline) == regressor.preprocessor.n_inputs
    assert regressor.info["best_epoch"] == streamed.result.best_epoch
    assert regressor.info["training_rows"] == train.n_rows and regressor.info["data_loading"] == "stream"


@pytest.mark.parametrize("holdout", [True, False], ids=["held-out", "validation-channel"])
def test_early_stopping_keeps_the_best_epoch(split_cars: tuple[Table, Table, Table], holdout: bool) -> None:
    train, validation, _ = split_cars
    # a learning rate this high overfits within a few epochs: the validation loss turns up early
    config = TrainingConfig(hidden_layers=(64,), ensemble_size=1, epochs=60, patience=3, learning_rate=0.05,
                            batch_size=32)
    reports: list[EpochReport] = []
    streamed = fit_streaming(chunked(train, 250), config, on_epoch=reports.append,
                             validation=None if holdout else chunked(validation, 250))
    result = streamed.result
    assert result.epochs_run < config.epochs
    assert result.epochs_run == result.best_epoch + config.patience
    losses = {r.epoch: r.validation_loss for r in reports}
    assert sorted(losses) == list(range(1, result.epochs_run + 1))
    assert result.best_epoch == min(losses, key=lambda epoch: losses[epoch])
    # the kept weights are the best epoch's: their validation rmse is the one reported for it
    best = next(r for r in reports if r.epoch == result.best_epoch)
    assert result.metrics["validation"]["rmse"] == pytest.approx(best.validation_rmse, rel=1e-6)


@pytest.mark.parametrize(("column", "changes", "fragments"), [
    ("KM", {7: "lots"}, ["row 8", "column 'KM'", "'lots'", "otherwise numeric"]),
    ("HP", {300: "inf"}, ["row 301", "column 'HP'", "not a finite number"]),
    ("Price", {1200: ""}, ["row 1201", "column 'Price'", "target value is missing"]),
    ("Price", {900: "-5"}, ["row 901", "column 'Price'", "log needs positive targets"]),
    ("Price", {40: "cheap"}, ["row 41", "column 'Price'", "expected a number"]),
])
def test_a_bad_cell_fails_with_its_row(cars: Table, column: str, changes: dict[int, object],
                                       fragments: list[str]) -> None:
    with pytest.raises(DataError) as caught:
        fit_streaming(chunked(with_cells(cars, column, changes), 100), LINEAR)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_column_of_words_is_categorical_even_with_numbers_among_them(cars: Table) -> None:
    words = {i: "many" for i in range(0, cars.n_rows, 2)}
    table = with_cells(cars, "Doors", words)
    streamed = fit_streaming(chunked(table, 100), LINEAR)
    training = table.take(np.flatnonzero(~held_out(np.arange(table.n_rows), LINEAR)))
    assert_same_preprocessor(streamed.result.regressor.preprocessor,
                             fit_preprocessor(training, infer_schema(table, None), "log"))


def test_unknown_roles_and_other_columns_fail(cars: Table) -> None:
    with pytest.raises(DataError, match="target names column 'price'"):
        fit_streaming(chunked(cars, 100), TrainingConfig(hidden_layers=(), target="price"))
    renamed = Table({("km" if name == "KM" else name): values for name, values in cars.columns.items()})

    def mixed(index: int) -> Iterator[Table]:
        yield cars.take(np.arange(100))
        yield renamed.take(np.arange(100, 200))
    with pytest.raises(DataError, match="has columns"):
        fit_streaming(mixed, LINEAR)


def test_a_stop_request_stops_between_steps(cars: Table) -> None:
    calls = {"n": 0}

    def requested() -> bool:
        calls["n"] += 1
        return calls["n"] > 20   # in the first epoch: pass 0 polls 16 times (15 chunks, its end)
    with pytest.raises(TrainingStopped) as caught:
        fit_streaming(chunked(cars, 100), MLP, stop_requested=requested)
    assert caught.value.checkpoint is None and "does not write checkpoints" in str(caught.value.not_written)
    assert caught.value.position.epochs_done == 0 and caught.value.position.batches_done > 0


def test_the_hold_out_is_a_seeded_hash_of_the_row_number() -> None:
    rows = np.arange(200_000)
    first = held_out(rows, LINEAR)
    assert abs(first.mean() - 0.2) < 0.005
    assert np.array_equal(first, held_out(rows, LINEAR))
    assert not np.array_equal(first, held_out(rows, TrainingConfig(hidden_layers=(), seed=1)))
    assert np.array_equal(held_out(rows[1000:2000], LINEAR), first[1000:2000])
