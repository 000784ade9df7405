"""The normal equations of encoded rows, A^T A and A^T y with A = [x | 1], in float64, computed for what
most of A is: one-hot columns.

    gram, moment = normal_equations(x, y, preprocessor.one_hot_blocks)

Preprocessor.encode writes every categorical feature as a block of columns with exactly one 1 in each row
(the row's level, or the unknown slot). Between two such blocks, A^T A holds counts: how many rows have
level a of one feature and level b of the other. Counting the rows' level codes (one bincount per pair of
features) gives them in time linear in the rows, where the dense product costs rows x columns^2
multiply-adds: 1,735 columns on LaptopSales' 227k training rows (two postcode-like features) took ~11 s of
a 2-core machine's time, the counts a few milliseconds. What remains, every column against the numeric
columns and the bias, is one float64 product of (rows x columns) by (rows x (numeric + 1)).

Counts are exact in float64, so the result is the dense product's up to the order in which the sums of
the numeric products are rounded. For dense rows every operation here is deterministic on a GPU too
(bincount without weights counts integers) and runs on the rows' device; compact rows (model/onehot_rows.py,
CPU only) skip the zeros of the other products too, with index_add_.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.onehot_rows import OneHotLayout, OneHotRows


def normal_equations(x: torch.Tensor | OneHotRows, y: torch.Tensor,
                     one_hot: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T A, A^T y) in float64, A = [x | 1] for x (rows, columns) and y (rows,). `one_hot` lists x's
    one-hot blocks as (first column, width), each block holding exactly one 1 per row
    (Preprocessor.one_hot_blocks); without blocks this is the dense product. Compact rows
    (model/onehot_rows.py) carry their blocks in their layout, and `one_hot` is not read."""
    if isinstance(x, OneHotRows):
        return _compact(x, y)
    rows, columns = x.shape
    a = torch.empty(rows, columns + 1, dtype=torch.float64, device=x.device)
    a[:, :columns] = x
    a[:, columns] = 1.0
    moment = a.T @ y.double()
    if not one_hot:
        return a.T @ a, moment
    dense = _dense_and_bias(OneHotLayout.build(columns, one_hot)).to(x.device)
    gram = torch.empty(columns + 1, columns + 1, dtype=torch.float64, device=x.device)
    against_dense = a.T @ a[:, dense]
    gram[:, dense] = against_dense
    gram[dense, :] = against_dense.T
    # each row's level in each block: its one 1 is the block's largest value
    _count_levels(gram, [a[:, start:start + width].argmax(dim=1) for start, width in one_hot], one_hot)
    return gram, moment


def _compact(rows: OneHotRows, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """normal_equations of compact rows (on the CPU, as OneHotLayout makes them): the dense columns' and
    the bias's products as a product, their sums per level with index_add_ (in index order on a CPU),
    and the counts."""
    layout, count, blocks = rows.layout, len(rows), rows.hot.shape[1]
    columns = layout.n_inputs
    d = torch.empty(count, len(layout.dense_columns) + 1, dtype=torch.float64)
    d[:, :-1] = rows.dense
    d[:, -1] = 1.0
    dense = _dense_and_bias(layout)
    hot = rows.hot.T.reshape(-1)   # block by block, as repeat() lays out the rows' values
    y = y.double()
    against_dense = torch.zeros(columns + 1, len(dense), dtype=torch.float64)
    against_dense[dense] = d.T @ d
    against_dense.index_add_(0, hot, d.repeat(blocks, 1))
    gram = torch.empty(columns + 1, columns + 1, dtype=torch.float64)
    gram[:, dense] = against_dense
    gram[dense, :] = against_dense.T
    _count_levels(gram, [rows.hot[:, j] - start for j, (start, _) in enumerate(layout.blocks)], layout.blocks)
    moment = torch.zeros(columns + 1, dtype=torch.float64)
    moment[dense] = d.T @ y
    moment.index_add_(0, hot, y.repeat(blocks))
    return gram, moment


def _dense_and_bias(layout: OneHotLayout) -> torch.Tensor:
    """The columns of A outside the one-hot blocks: the numeric ones, and the bias (A's last)."""
    return torch.cat([layout.dense_columns, torch.tensor([layout.n_inputs])])


def _count_levels(gram: torch.Tensor, codes: list[torch.Tensor], one_hot: Sequence[tuple[int, int]]) -> None:
    """Writes the blocks' entries of gram: for blocks j and k, how many rows have level a in j and b in k,
    from each row's level `codes` per block."""
    for j, (start_j, width_j) in enumerate(one_hot):
        for k in range(j, len(one_hot)):
            start_k, width_k = one_hot[k]
            counts = torch.bincount(codes[j] * width_k + codes[k], minlength=width_j * width_k)
            block = counts.reshape(width_j, width_k).to(torch.float64)
            gram[start_j:start_j + width_j, start_k:start_k + width_k] = block
            gram[start_k:start_k + width_k, start_j:start_j + width_j] = block.T
