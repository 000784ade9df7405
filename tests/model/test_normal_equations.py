"""The linear model's normal equations, counted between one-hot blocks, equal the dense product of the
encoded rows: exactly between one-hot columns (counts), to float rounding elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.normal_equations import normal_equations
from model.onehot_rows import OneHotLayout
from model.preprocessing import fit_preprocessor
from model.schema import infer_schema
from model.table import Table


def _table(rows: int, seed: int, levels: tuple[int, int]) -> Table:
    rng = np.random.default_rng(seed)
    cells = {
        "price": rng.normal(10_000, 2_000, rows).round(2).astype(str).astype(object),
        "km": rng.normal(50_000, 20_000, rows).round().astype(str).astype(object),
        "colour": np.array([f"c{i}" for i in rng.integers(0, levels[0], rows)], dtype=object),
        "age": rng.integers(1, 80, rows).astype(str).astype(object),
        "postcode": np.array([f"p{i}" for i in rng.integers(0, levels[1], rows)], dtype=object),
    }
    cells["km"][::7] = ""        # missing numbers: the training mean
    cells["colour"][::11] = ""   # missing categories: the unknown slot
    return Table(cells)


def _dense(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    return a.T @ a, a.T @ y.double()


@pytest.mark.parametrize("seen", [True, False], ids=["training rows", "rows with unseen levels"])
def test_the_counted_products_equal_the_dense_ones(seen: bool) -> None:
    train = _table(3_000, 0, (5, 40))
    preprocessor = fit_preprocessor(train, infer_schema(train, "price", ["postcode"]), "none")
    rows = train if seen else _table(2_000, 1, (8, 60))   # levels c5-c7 and p40-p59 land in the unknown slots
    x = torch.from_numpy(preprocessor.encode(rows))
    y = torch.from_numpy(preprocessor.encode_target(rows))
    blocks = preprocessor.one_hot_blocks
    assert [width for _, width in blocks] == [1 + 5, 1 + 40]
    gram, moment = normal_equations(x, y, blocks)
    dense_gram, dense_moment = _dense(x, y)
    for start_j, width_j in blocks:   # counts: exactly the dense product's integers
        for start_k, width_k in blocks:
            assert torch.equal(gram[start_j:start_j + width_j, start_k:start_k + width_k],
                               dense_gram[start_j:start_j + width_j, start_k:start_k + width_k])
    if not seen:
        assert gram[blocks[1][0], blocks[1][0]] > 0   # the unknown postcode slot has rows
    np.testing.assert_allclose(gram.numpy(), dense_gram.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(moment.numpy(), dense_moment.numpy(), rtol=1e-12, atol=1e-9)


def test_compact_rows_give_the_dense_products() -> None:
    train = _table(3_000, 0, (5, 40))
    preprocessor = fit_preprocessor(train, infer_schema(train, "price", ["postcode"]), "none")
    rows = _table(2_000, 1, (8, 60))
    x = torch.from_numpy(preprocessor.encode(rows))
    y = torch.from_numpy(preprocessor.encode_target(rows))
    compact = OneHotLayout.build(preprocessor.n_inputs, preprocessor.one_hot_blocks).compact(x)
    gram, moment = normal_equations(compact, y, ())
    dense_gram, dense_moment = _dense(x, y)
    np.testing.assert_allclose(gram.numpy(), dense_gram.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(moment.numpy(), dense_moment.numpy(), rtol=1e-12, atol=1e-9)


def test_without_one_hot_blocks_it_is_the_dense_product() -> None:
    x, y = torch.randn(500, 6), torch.randn(500)
    gram, moment = normal_equations(x, y, ())
    dense_gram, dense_moment = _dense(x, y)
    np.testing.assert_allclose(gram.numpy(), dense_gram.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(moment.numpy(), dense_moment.numpy(), rtol=1e-12, atol=1e-9)
