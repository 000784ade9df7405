"""The network: the linear model (the hyperplane of best fit) or an ensemble of MLPs.

`build_network(n_inputs, ())` is one linear layer. With hidden layers it is `members` independent ReLU
MLPs side by side: each sees the same inputs, is initialised differently and is trained on its own
loss; the prediction is their mean. On the used-car data a single MLP is no better than the linear model
(its test error swings by +-10% with the seed), while the mean of five beats it (docs/model-defaults.md).

The forward pass returns one column per member, shape (rows, members); `predict` takes the row mean.

Inference has a second, faster route to the same mean: `FusedEnsemble.of(network)` stacks the members'
weights (layer k of every member into one (members, in, out) tensor) so that the whole ensemble is one
batched matmul per layer, instead of members x layers module calls (on one row, 25 module calls cost
~85 us, the fused route ~15 us). It is an inference-only copy made from the module, never saved: the
module, its state_dict keys and the training forward stay exactly as they are. It agrees with
`predict_mean` to float32 rounding (tests/serving/test_fastpath.py: 1e-6), not bit for bit.

On the CPU, a few rows (at most `FusedEnsemble.NUMPY_ROWS`, a single-row request above all) go through
numpy views of the same stacked weights: one torch call costs ~4 us of dispatch before any arithmetic, and
releases the GIL, which a serving worker's other threads then take; a row through numpy costs ~10 us in
all against ~24 us through torch. One row alone (`FusedEnsemble.row_mean`) goes through one call of a
small C extension over the same numpy layout (model/_rowmlp.c): ~2.5 us on the default model where numpy's
8 calls take ~9, and ~30 us less CPU a request in a serving worker (docs/benchmarks.md). Where the
extension is not built (a source checkout never bootstrapped), `row_mean` is None and one row takes the
numpy route.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(inputs) for member in self.members], dim=1)


def build_network(n_inputs: int, hidden_layers: Sequence[int], dropout: float = 0.0,
                  members: int = 1) -> Ensemble:
    """`hidden_layers=()` is linear regression (always one member); `(64, 32)` gives MLPs of those widths."""
    return Ensemble([_mlp(n_inputs, hidden_layers, dropout) for _ in range(members if hidden_layers else 1)])


def predict_mean(network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction: the mean over members, shape (rows,)."""
    return torch.as_tensor(network(inputs)).mean(dim=1)


class FusedEnsemble:
    """The mean of an Ensemble of plain MLPs (Linear, ReLU, Dropout in eval mode) as stacked weights.

    Built with `of`, which returns None for any other network (then callers use `predict_mean`). The
    weights are copies, so `stale()` says whether the parameters it was built from have changed since: an
    optimiser step or load_state_dict bumps a tensor's in-place version, `.to()` swaps its data. (A
    parameter replaced by a new object is not seen; nothing here does that.) Checking costs ~3 us, where
    walking network.parameters() would cost ~25 us.
    """

    # Rows per batched matmul: the stacked hidden activations of 100k rows would take members x 100k x
    # width floats at once (256 MiB for 5 x 128); in blocks they stay small and in cache (fastest on the
    # 2-core development machine between 512 and 2048 rows).
    BLOCK_ROWS = 2048
    # Rows up to which a CPU copy computes in numpy (`numpy_mean`): faster than torch at every size tried on
    # one thread (1 row 11 against 24 us, 64 rows 93 against 124 us), but torch's multi-threaded kernels win
    # on big blocks, so only small requests take it.
    NUMPY_ROWS = 64

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor],
                 parameters: list[nn.Parameter]) -> None:
        self.weights = weights   # per layer: (members, in, out)
        self.biases = biases     # per layer: (members, 1, out)
        self.members = weights[0].shape[0]
        self._parameters = parameters
        # numpy views of the CPU tensors (no copy), or None on a GPU
        self.arrays = [(weight.numpy(), bias.numpy()) for weight, bias in zip(weights, biases, strict=True)] \
            if weights[0].device.type == "cpu" else None
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self._middle: list[np.ndarray] = []
        self._last: np.ndarray | None = None
        # one row's mean in one C call (model/_rowmlp.c), or None: numpy_mean then computes it
        self.row_mean: Callable[[list[float]], float] | None = None
        if self.arrays is not None:
            self._first, self._middle, self._last = _numpy_layers(self.arrays)
            self.row_mean = _row_kernel(self._first, self._middle, self._last, self.members)
        self._stamp = self._current_stamp()
        self.frozen = False   # set by Regressor.freeze: the weights will not change, stale() need not look

    @classmethod
    def of(cls, network: nn.Module) -> FusedEnsemble | None:
        if not isinstance(network, Ensemble) or len(network.members) == 0:
            return None
        layers: list[list[nn.Linear]] = []
        for member in network.members:
            linears = _plain_mlp(member)
            if linears is None:
                return None
            layers.append(linears)
        depth = len(layers[0])
        if any(len(linears) != depth for linears in layers) or layers[0][-1].out_features != 1:
            return None
        for k in range(depth):
            shapes = {(linears[k].in_features, linears[k].out_features) for linears in layers}
            if len(shapes) != 1:
                return None
        with torch.no_grad():
            weights = [torch.stack([linears[k].weight.detach().t() for linears in layers]).contiguous()
                       for k in range(depth)]
            biases = [torch.stack([linears[k].bias.detach() for linears in layers])[:, None, :].contiguous()
                      for k in range(depth)]
        return cls(weights, biases, list(network.parameters()))

    def stale(self) -> bool:
        return not self.frozen and self._current_stamp() != self._stamp

    def _current_stamp(self) -> tuple[list[int], list[int]]:
        return [p._version for p in self._parameters], [p.data_ptr() for p in self._parameters]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The members' mean for `inputs` (rows, n_inputs), shape (rows,); call it under inference_mode."""
        if inputs.shape[0] <= self.BLOCK_ROWS:
            return self._block(inputs)
        return torch.cat([self._block(block) for block in torch.split(inputs, self.BLOCK_ROWS)])

    def numpy_mean(self, inputs: np.ndarray) -> np.ndarray:
        """`self(inputs)` computed in numpy: float32 (rows, n_inputs) in, (rows,) out; CPU copies only
        (`arrays` is None on a GPU), laid out by _numpy_layers: the first layer of every member is one
        matmul, each later layer one batched matmul with its biases inside (on one row, 8 numpy calls in
        all where adding biases apart took 12). numpy may round differently from torch (within float32
        rounding), so callers pick one route per row count, never per request path
        (Regressor.predict_encoded)."""
        assert self.arrays is not None and self._first is not None, "numpy_mean needs weights on the CPU"
        rows = inputs.shape[0]
        # inputs far outside the training data overflow to inf and nan, which torch computes silently and
        # the callers refuse with the row; numpy would also warn
        with np.errstate(over="ignore", invalid="ignore"):
            hidden = inputs @ self._first[0]
            hidden += self._first[1]
            if self._last is None:   # one layer: `hidden` holds each member's output, (rows, members)
                mean: np.ndarray = np.add.reduce(hidden, axis=1) / self.members
                return mean
            np.maximum(hidden, 0.0, out=hidden)   # the ReLU; it keeps the constant units at 1
            # (members, rows, units): for one row a plain reshape, no transposed view to walk
            hidden = hidden.reshape(self.members, 1, -1) if rows == 1 else \
                hidden.reshape(rows, self.members, -1).transpose(1, 0, 2)
            for weight in self._middle:
                hidden = np.matmul(hidden, weight)
                np.maximum(hidden, 0.0, out=hidden)
            units = hidden.reshape(1, -1) if rows == 1 else hidden.transpose(1, 0, 2).reshape(rows, -1)
            mean = units @ self._last
        return mean

    def _block(self, inputs: torch.Tensor) -> torch.Tensor:
        # (members, rows, in) as a stride-0 view: every member reads the same rows, nothing is copied
        hidden = inputs.unsqueeze(0).expand(self.members, *inputs.shape)
        last = len(self.weights) - 1
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = torch.baddbmm(bias, hidden, weight)
            if k < last:
                hidden.relu_()
        return hidden.mean(dim=0).squeeze(1)


def _numpy_layers(arrays: list[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[tuple[np.ndarray, np.ndarray], list[np.ndarray], np.ndarray | None]:
    """numpy_mean's weights, from the stacked (members, in, out) weights and (members, 1, out) biases.

    First: every member's first layer side by side, (in, members x units) and its biases (1, members x
    units), so that a row is read once, in one BLAS call. After it, every hidden layer carries one more
    unit per member whose weights are 0 and bias 1: a constant 1 through the ReLU. The next layer holds
    its biases as that unit's weights (middle: (members, units + 1, out + 1)), so each hidden layer is one
    matmul and one ReLU, with no separate addition; and the last layer, the member mean folded in, is one
    matrix-vector product over every member's units, biases included. A network of one layer has no
    hidden units: its first layer is its output, one per member, and `last` is None.

    Where the bias is added inside the product rather than after it, float32 rounding may differ from
    torch's in the last place; numpy_mean promises agreement to float32 rounding, not bits.
    """
    members = arrays[0][0].shape[0]
    deep = len(arrays) > 1
    constant = 1 if deep else 0
    weight, bias = arrays[0]
    inputs, units = weight.shape[1], weight.shape[2]
    first = np.zeros((inputs, members, units + constant), np.float32)
    first[:, :, :units] = weight.transpose(1, 0, 2)
    first_bias = np.zeros((1, members, units + constant), np.float32)
    first_bias[0, :, :units] = bias[:, 0, :]
    first_bias[0, :, units:] = 1.0
    middle = []
    for weight, bias in arrays[1:-1]:
        units, out = weight.shape[1], weight.shape[2]
        layer = np.zeros((members, units + 1, out + 1), np.float32)
        layer[:, :units, :out] = weight
        layer[:, units, :out] = bias[:, 0, :]
        layer[:, units, out] = 1.0
        middle.append(layer)
    last = None
    if deep:
        weight, bias = arrays[-1]
        units = weight.shape[1]
        last = np.zeros((members, units + 1), np.float32)
        last[:, :units] = weight[:, :, 0] / np.float32(members)
        last[:, units] = bias[:, 0, 0] / np.float32(members)
        last = last.reshape(-1)
    return (first.reshape(inputs, -1), first_bias.reshape(1, -1)), middle, last


def _row_kernel(first: tuple[np.ndarray, np.ndarray], middle: list[np.ndarray], last: np.ndarray | None,
                members: int) -> Callable[[list[float]], float] | None:
    """model/_rowmlp.c's `mean` bound to _numpy_layers' arrays packed into one buffer, or None where it does
    not apply: no hidden layer (the linear model: numpy's one product is as cheap), more inputs or a layer
    wider than it computes (_rowmlp.MAX_WIDTH, its stack buffers; a category of many levels makes many
    inputs), weights that are not all finite (it skips a zero input's weights, where numpy would add
    0 x inf = nan), or an extension that was never built."""
    if last is None:
        return None
    try:
        from model import _rowmlp
    except ImportError:
        return None
    weights, biases = first
    dims = (weights.shape[0], members, weights.shape[1], *(layer.shape[2] for layer in middle))
    if max([dims[0], dims[2], *(members * width for width in dims[3:])]) > _rowmlp.MAX_WIDTH:
        return None
    packed = np.concatenate([weights.reshape(-1), biases.reshape(-1), *(layer.reshape(-1) for layer in middle),
                             last])
    if not np.isfinite(packed).all():
        return None
    return functools.partial(_rowmlp.mean, packed, dims)


def _plain_mlp(member: nn.Module) -> list[nn.Linear] | None:
    """The linear layers of a member laid out as _mlp builds it (Linear, ReLU[, Dropout], ..., Linear),
    or None for anything else, whose forward the fused route could not reproduce."""
    if not isinstance(member, nn.Sequential):
        return None
    modules = list(member)
    linears: list[nn.Linear] = []
    index = 0
    while index < len(modules):
        linear = modules[index]
        if not isinstance(linear, nn.Linear) or linear.bias is None:
            return None
        linears.append(linear)
        index += 1
        if index == len(modules):
            return linears
        if not isinstance(modules[index], nn.ReLU):
            return None
        index += 1
        if index < len(modules) and isinstance(modules[index], nn.Dropout):   # identity in eval mode
            index += 1
    return None   # ends in a ReLU or Dropout


def _mlp(n_inputs: int, hidden_layers: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden_layers:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)
