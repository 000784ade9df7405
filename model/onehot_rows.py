"""Encoded rows kept with their one-hot blocks as column numbers, and a first layer's products with them.

    layout = OneHotLayout.of(preprocessor.n_inputs, preprocessor.one_hot_blocks, device)   # or None
    rows = OneHotRows(layout, *map(torch.from_numpy, preprocessor.encode_compact(table)))
    rows = layout.compact(x)                      # the same, from x = preprocessor.encode(table)
    first_layer(weight, bias, rows, out)          # out = weight @ x.T + bias: (units, rows)
    first_layer_gradient(upstream, rows, out)     # out = upstream @ x: (units, n_inputs)

A categorical feature with many levels (postcodes, product codes) makes an encoded row mostly zeros: on
LaptopSales, 1,724 of its 1,735 columns are one-hot, with one 1 per block in each row. As a dense float32
matrix its 227k training rows take 1.6 GB (~100 times the text of its CSV), and a dense first layer
multiplies every column, for every unit and row, forward and backward: half of the 20 s an MLP took to fit
there. Kept compact, as the values of the other ("dense") columns and the column of each block's 1, the
rows take a few bytes per feature; the forward is the dense columns' product plus, per block, the weight
column of the row's 1 (a gather), and the weight gradient is the dense columns' product plus, per block,
the row's upstream gradient added into the column of its 1 (index_add_). These are the dense product's
sums without their zero terms: equal to it to float rounding. fit() builds compact rows straight from the
table (Preprocessor.encode_compact), and the linear model's normal equations take them too
(model/normal_equations.py).

On a GPU index_add_ adds with atomics, in no fixed order, and a seed would no longer give one model bit for
bit; there the dense product is fast anyway. So OneHotLayout.of gives a layout on the CPU only, and only
where the one-hot columns are many enough to pay for the gathers' fixed costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OneHotLayout:
    """Where an encoded row's one-hot blocks lie: (first column, width) each; the other columns are dense."""

    n_inputs: int
    blocks: tuple[tuple[int, int], ...]
    dense_columns: torch.Tensor   # int64, ascending

    # The fewest one-hot columns for which compact rows pay. A training step of the default ensemble (5 x
    # MLP 128-64, batches of 64 and of 2,048 rows, one categorical feature and 10 numbers) on the 2-core
    # development machine broke even near 128 one-hot columns; at 256 the compact step took ~0.7x the
    # dense one's time, at 1,024 under 0.3x. Below, the gathers' fixed costs outweigh the zeros skipped.
    MIN_ONE_HOT_COLUMNS = 256

    @classmethod
    def of(cls, n_inputs: int, blocks: Sequence[tuple[int, int]], device: torch.device) -> OneHotLayout | None:
        """The layout for a first layer on `device`, or None where dense rows are the better choice."""
        if device.type != "cpu" or sum(width for _, width in blocks) < cls.MIN_ONE_HOT_COLUMNS:
            return None
        return cls.build(n_inputs, blocks)

    @classmethod
    def build(cls, n_inputs: int, blocks: Sequence[tuple[int, int]]) -> OneHotLayout:
        in_a_block = torch.zeros(n_inputs, dtype=torch.bool)
        for start, width in blocks:
            in_a_block[start:start + width] = True
        return cls(n_inputs, tuple(blocks), torch.nonzero(~in_a_block)[:, 0])

    def compact(self, x: torch.Tensor) -> OneHotRows:
        """`x`'s rows compact: its dense columns' values, and per block the column of the row's 1 (the
        block's largest value: Preprocessor.encode writes exactly one 1 per block and row)."""
        hot = torch.stack([x[:, start:start + width].argmax(dim=1) + start for start, width in self.blocks], dim=1)
        return OneHotRows(self, x.index_select(1, self.dense_columns), hot)


@dataclass(frozen=True)
class OneHotRows:
    """Rows of an encoded matrix, compact (OneHotLayout.compact): `dense` (rows, dense columns) values and
    `hot` (rows, blocks) the column of each block's 1."""

    layout: OneHotLayout
    dense: torch.Tensor
    hot: torch.Tensor

    def __len__(self) -> int:
        return self.dense.shape[0]

    def __getitem__(self, rows: slice) -> OneHotRows:
        return OneHotRows(self.layout, self.dense[rows], self.hot[rows])

    def index_select(self, rows: torch.Tensor) -> OneHotRows:
        return OneHotRows(self.layout, self.dense.index_select(0, rows), self.hot.index_select(0, rows))

    def column_sums(self) -> torch.Tensor:
        """The sums of the encoded matrix's columns, float64, (n_inputs,): a one-hot column's is a count."""
        sums = torch.zeros(self.layout.n_inputs, dtype=torch.float64)
        sums[self.layout.dense_columns] = self.dense.sum(dim=0, dtype=torch.float64)
        return sums + torch.bincount(self.hot.reshape(-1), minlength=self.layout.n_inputs)

    def expand(self) -> torch.Tensor:
        """The dense (rows, n_inputs) matrix these rows stand for."""
        x = torch.zeros(len(self), self.layout.n_inputs, dtype=self.dense.dtype)
        x[:, self.layout.dense_columns] = self.dense
        x.scatter_(1, self.hot, 1.0)
        return x


def first_layer(weight: torch.Tensor, bias: torch.Tensor, rows: OneHotRows, out: torch.Tensor) -> torch.Tensor:
    """out = weight @ x.T + bias for the rows x stands for: weight (units, n_inputs), bias (units, 1),
    out (units, rows)."""
    units, count = weight.shape[0], len(rows)
    torch.addmm(bias, weight.index_select(1, rows.layout.dense_columns), rows.dense.T, out=out)
    # every block's weight columns at once, block by block: (units, blocks, rows) summed over the blocks
    gathered = weight.index_select(1, rows.hot.T.reshape(-1)).view(units, -1, count)
    return out.add_(gathered.sum(dim=1))


def first_layer_gradient(upstream: torch.Tensor, rows: OneHotRows, out: torch.Tensor) -> torch.Tensor:
    """out = upstream @ x for the rows x stands for: upstream (units, rows), out (units, n_inputs)."""
    blocks = rows.hot.shape[1]
    out.zero_()
    out.index_copy_(1, rows.layout.dense_columns, upstream @ rows.dense)
    # index_add_ in index order (on the CPU): the same sums whatever the run
    return out.index_add_(1, rows.hot.T.reshape(-1), upstream.repeat(1, blocks))
