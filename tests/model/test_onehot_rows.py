"""Compact rows (model/onehot_rows.py) stand for the encoded matrix exactly, and the first layer's products
with them, forward and backward, equal the dense products to float rounding, alone, in the stacked
ensemble's training step and in fit()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import TrainingConfig
from model.network import build_network
from model.onehot_rows import OneHotLayout, first_layer, first_layer_gradient
from model.preprocessing import Preprocessor, fit_preprocessor
from model.schema import infer_schema
from model.stacked import StackedEnsemble
from model.table import Table
from model.training import fit


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


def test_fit_on_many_levels_trains_compact_to_the_dense_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed: the same model as the dense first layer to float rounding, and bit for bit the same
    model run after run."""
    train, test = _table(3_000, 2), _table(400, 3)
    config = TrainingConfig(target="price", categorical_columns=("postcode",), hidden_layers=(16, 8),
                            ensemble_size=2, dropout=0.1, epochs=4, batch_size=128)
    compact = fit(train, config).regressor.predict(test.without("price"))
    again = fit(train, config).regressor.predict(test.without("price"))
    monkeypatch.setattr(OneHotLayout, "MIN_ONE_HOT_COLUMNS", 10**9)
    dense = fit(train, config).regressor.predict(test.without("price"))
    assert np.array_equal(compact, again)
    assert not np.array_equal(compact, dense)   # compact rows were used: other sums, other rounding...
    np.testing.assert_allclose(compact, dense, rtol=1e-4)   # ...and nothing more
