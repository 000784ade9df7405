"""Compact rows (model/onehot_rows.py) stand for the encoded matrix exactly, and the first layer's products
with them, forward and backward, equal the dense products to float rounding, alone, in the stacked
ensemble's training step and in fit()."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model import training
from model.config import TrainingConfig
from model.errors import DataError
from model.network import FusedEnsemble, build_network
from model.onehot_rows import OneHotLayout, OneHotRows, first_layer, first_layer_gradient
from model.preprocessing import Preprocessor, fit_preprocessor
from model.schema import infer_schema
from model.stacked import StackedEnsemble
from model.table import Table
from model.training import evaluate, fit


def _table(rows: int, seed: int, postcodes: int = 300) -> Table:
    rng = np.random.default_rng(seed)
    postcode = rng.integers(0, postcodes, rows)
    age = rng.integers(1, 80, rows)
    colour = rng.integers(0, 6, rows)
    price = 20_000 - 150 * age + 30 * (postcode % 17) + 400 * colour + rng.normal(0, 300, rows)
    cells = {"price": price.round(2).astype(str).astype(object), "age": age.astype(str).astype(object),
             "colour": np.array([f"c{i}" for i in colour], dtype=object),
             "postcode": np.array([f"p{i}" for i in postcode], dtype=object),
             "km": rng.normal(50_000, 20_000, rows).round().astype(str).astype(object)}
    cells["colour"][::13] = ""   # the unknown slot
    return Table(cells)


@pytest.fixture(scope="module")
def encoded() -> tuple[Preprocessor, torch.Tensor]:
    train = _table(2_000, 0)
    preprocessor = fit_preprocessor(train, infer_schema(train, "price", ["postcode"]), "none")
    other = _table(500, 1, postcodes=340)   # postcodes p300-p339 were never seen: the unknown slot
    return preprocessor, torch.from_numpy(preprocessor.encode(other))


def _layout(preprocessor: Preprocessor) -> OneHotLayout:
    return OneHotLayout.build(preprocessor.n_inputs, preprocessor.one_hot_blocks)


def test_compact_rows_stand_for_the_encoded_matrix_exactly(encoded: tuple[Preprocessor, torch.Tensor]) -> None:
    preprocessor, x = encoded
    rows = _layout(preprocessor).compact(x)
    assert rows.dense.shape == (len(x), 2) and rows.hot.shape == (len(x), 2)   # km, age; colour, postcode
    assert torch.equal(rows.expand(), x)
    picked = torch.tensor([5, 0, 499, 5])
    assert torch.equal(rows.index_select(picked).expand(), x[picked])
    assert torch.equal(rows[10:20].expand(), x[10:20])


def test_the_preprocessor_encodes_compact_rows_directly(encoded: tuple[Preprocessor, torch.Tensor]) -> None:
    """encode_compact: the same values as encode, with no dense matrix made; and the same errors."""
    preprocessor, x = encoded
    table = _table(500, 1, postcodes=340)
    numbers, hot = preprocessor.encode_compact(table)
    rows = OneHotRows(_layout(preprocessor), torch.from_numpy(numbers), torch.from_numpy(hot))
    assert torch.equal(rows.expand(), x)
    table.columns["km"][7] = "far"
    for encode in (preprocessor.encode, preprocessor.encode_compact):
        with pytest.raises(DataError) as caught:
            encode(table)
        assert caught.value.row == "row 8" and caught.value.column == "km"


def test_the_first_layer_products_equal_the_dense_ones(encoded: tuple[Preprocessor, torch.Tensor]) -> None:
    preprocessor, x = encoded
    rows = _layout(preprocessor).compact(x)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, x.shape[1], generator=generator)
    bias = torch.randn(24, 1, generator=generator)
    upstream = torch.randn(24, len(x), generator=generator)
    out = torch.empty(24, len(x))
    torch.testing.assert_close(first_layer(weight, bias, rows, out), torch.addmm(bias, weight, x.T))
    gradient = torch.full((24, x.shape[1]), float("nan"))   # every entry is written
    torch.testing.assert_close(first_layer_gradient(upstream, rows, gradient), upstream @ x)


def test_rows_of_categories_only() -> None:
    x = torch.zeros(6, 5)
    x[torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])] = 1.0
    x[torch.arange(6), torch.tensor([3, 4, 4, 3, 3, 4])] = 1.0
    layout = OneHotLayout.build(5, ((0, 3), (3, 2)))
    rows = layout.compact(x)
    weight, bias = torch.randn(4, 5), torch.randn(4, 1)
    torch.testing.assert_close(first_layer(weight, bias, rows, torch.empty(4, 6)), torch.addmm(bias, weight, x.T))


def test_a_layout_only_where_it_pays() -> None:
    many, few = ((2, 300), (302, 4)), ((2, 40), (42, 4))
    assert OneHotLayout.of(310, many, torch.device("cpu")) is not None
    assert OneHotLayout.of(50, few, torch.device("cpu")) is None
    # on a GPU, index_add_'s atomics would add in no fixed order: a seed would no longer fix the model
    assert OneHotLayout.of(310, many, torch.device("cuda")) is None


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_the_training_step_on_compact_rows_is_the_dense_step(encoded: tuple[Preprocessor, torch.Tensor],
                                                             dropout: float) -> None:
    preprocessor, x = encoded
    rows = _layout(preprocessor).compact(x)
    targets = torch.randn(len(x))
    torch.manual_seed(0)
    stacked = StackedEnsemble.of(build_network(x.shape[1], (16, 8), dropout, 3))
    torch.manual_seed(1)   # the same dropout masks for both
    dense_loss = stacked.squared_error_gradient(x, targets, len(x) * 3)
    dense_grad = stacked.grad.clone()
    torch.manual_seed(1)
    compact_loss = stacked.squared_error_gradient(rows, targets, len(x) * 3)
    torch.testing.assert_close(compact_loss, dense_loss)
    torch.testing.assert_close(stacked.grad, dense_grad)
    with torch.inference_mode():
        torch.testing.assert_close(stacked.predict_mean(rows), stacked.predict_mean(x))


@pytest.mark.parametrize("hidden", [(16, 8), ()], ids=["mlp", "linear"])
def test_fit_on_many_levels_trains_compact_to_the_dense_model(monkeypatch: pytest.MonkeyPatch,
                                                             hidden: tuple[int, ...]) -> None:
    """The same seed: the same model as from dense rows to float rounding (weights, explanations'
    baseline, metrics), and bit for bit the same model run after run."""
    train, test = _table(3_000, 2), _table(400, 3)
    config = TrainingConfig(target="price", categorical_columns=("postcode",), hidden_layers=hidden,
                            ensemble_size=2, dropout=0.1, epochs=4, batch_size=128)
    trained_on: list[type] = []   # what fit() made of the training and validation rows
    encode = training._tensors

    def recording(*args: Any) -> Any:
        encoded = encode(*args)
        trained_on.append(type(encoded[0]))
        return encoded

    monkeypatch.setattr(training, "_tensors", recording)
    compact = fit(train, config)
    again = fit(train, config)
    monkeypatch.setattr(OneHotLayout, "MIN_ONE_HOT_COLUMNS", 10**9)
    dense = fit(train, config)
    assert trained_on == [OneHotRows] * 4 + [torch.Tensor] * 2   # training and validation rows, per fit
    predicted = [result.regressor.predict(test.without("price")) for result in (compact, again, dense)]
    assert np.array_equal(predicted[0], predicted[1])
    np.testing.assert_allclose(predicted[0], predicted[2], rtol=1e-4)
    np.testing.assert_allclose(compact.regressor.baseline, dense.regressor.baseline, rtol=1e-9, atol=1e-12)
    for split in ("train", "validation"):
        assert compact.metrics[split]["rows"] == dense.metrics[split]["rows"]
        assert compact.metrics[split]["rmse"] == pytest.approx(dense.metrics[split]["rmse"], rel=1e-4)


@pytest.mark.parametrize("hidden", [(16, 8), ()], ids=["mlp", "linear"])
def test_compact_fits_score_as_evaluate_does(monkeypatch: pytest.MonkeyPatch, hidden: tuple[int, ...]) -> None:
    """fit()'s metrics of compact rows, predicted a chunk at a time, are evaluate()'s on the same tables bit
    for bit: small blocks make several chunks, and 2,860 training rows leave a tail of 44 rows that goes
    with the chunk before it (alone, it would take predict_encoded's numpy route)."""
    monkeypatch.setattr(FusedEnsemble, "BLOCK_ROWS", 16)   # chunks of 256 rows
    train, validation = _table(2_860, 4), _table(1_000, 5)
    config = TrainingConfig(target="price", categorical_columns=("postcode",), hidden_layers=hidden,
                            ensemble_size=2, epochs=2, batch_size=256)
    result = fit(train, config, validation=validation)
    for name, table in (("train", train), ("validation", validation)):
        assert result.metrics[name] == evaluate(result.regressor, table)
