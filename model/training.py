"""fit(): from training (and optional validation and test) tables to a Regressor and its metrics.

    result = fit(train_table, TrainingConfig(hidden_layers=()), on_epoch=print)

The validation rows come from the `validation` table or, without one, a seeded hold-out of the training
table. Preprocessing is fitted on the training rows only. The linear model is solved exactly, in one
epoch of one step: the normal equations summed in float64, solved by SVD for the minimum-norm
least-squares weights (numpy.linalg.lstsq's answer). The MLPs train with AdamW on shuffled mini-batches
and stop when the validation loss has not improved for `patience` epochs, keeping the best epoch's weights.
Same seed and data, same model: the split, the initial weights and the batch order all come from `seed`,
and torch runs in deterministic mode.

With `checkpointing` (model/checkpointing.py) the run can be stopped between two optimiser steps and
resumed from its checkpoint to exactly the model an uninterrupted run gives: between steps the loop hands
the checkpointer everything that decides the rest of the run (model/checkpoint.py lists it), and a resumed
run redraws the current epoch's batch order from the saved generator state and skips the batches done.
Without it, fit() behaves as it always did.

After training, the validation split's residuals calibrate split-conformal prediction intervals
(model/conformal.py), kept in `regressor.calibration`; the mean encoded training row is kept in
`regressor.baseline` for explanations (model/explanation.py).

Data-parallel: with a `group` of several processes (model/distributed.py), every process runs fit() and
they compute together exactly what one process would on all the rows, up to float rounding:
- `replicated=True` (every process was given the whole tables, SageMaker's FullyReplicated): the hold-out is
  drawn as one process draws it, then each rank keeps a contiguous share of every split;
  `replicated=False` (each was given its own rows, ShardedByS3Key): the hold-out is drawn over the rows of
  all ranks in rank order, as one process would draw it from their concatenation.
- The schema, levels and scaling statistics are agreed over all ranks (model/agreed.py).
- Every rank draws the same batch order over all training rows; each computes the summed loss of the rows
  of the batch it holds, the gradients are summed over ranks in one flat all-reduce and divided by the
  batch's rows, so every rank takes the same optimiser step a single process takes. (torch's
  DistributedDataParallel averages per-rank means, which differs from the batch mean whenever a batch
  divides unevenly between ranks.) The linear model's normal equations are sums too, all-reduced the
  same way, so it stays exactly least squares.
- Validation losses and metrics are sums over ranks, so early stopping is decided on the same numbers by
  every rank; rank 0 alone reads and writes checkpoints and hands the resumed state to the others; a
  SIGTERM on any rank stops all of them at the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from model.agreed import agreed_preprocessor, agreed_schema
from model.checkpoint import CheckpointError, Identity, Position, Snapshot, StateDict
from model.checkpointing import Checkpointer, Checkpointing
from model.config import TrainingConfig
from model.conformal import calibrate
from model.distributed import Group
from model.errors import DataError
from model.network import FusedEnsemble, build_network, predict_mean
from model.normal_equations import normal_equations
from model.onehot_rows import OneHotLayout, OneHotRows, first_layer
from model.preprocessing import Preprocessor, target_values
from model.regressor import Regressor
from model.schema import Schema
from model.stacked import FlatAdamW, StackedEnsemble
from model.table import Table

log = logging.getLogger("hyperplane.checkpoint")


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float         # mean squared error on the scaled target
    validation_loss: float
    validation_rmse: float    # in the target's own units


@dataclass(frozen=True)
class FitResult:
    regressor: Regressor
    metrics: dict[str, dict[str, float]]   # split name -> rmse, mae, mape, r2, rows
    best_epoch: int
    epochs_run: int
    history: list[EpochReport] = dataclasses.field(default_factory=list)   # the epochs this run trained


def fit(train: Table, config: TrainingConfig, validation: Table | None = None, test: Table | None = None,
        on_epoch: Callable[[EpochReport], None] | None = None,
        checkpointing: Checkpointing | None = None, group: Group | None = None,
        replicated: bool = True) -> FitResult:
    """Raises DataError for unusable data, CheckpointError for a checkpoint of another job or a damaged one,
    and TrainingStopped when checkpointing.stop_requested() turned true (after writing a checkpoint).
    With a `group`, every rank calls fit() and every rank gets the same FitResult (see the module's
    docstring for `replicated`)."""
    group = group or Group.single()
    schema = agreed_schema(train, config, group)
    for name, table in (("validation", validation), ("test", test)):
        if table is not None:
            group.agree(functools.partial(_check_same_columns, train, table, name))
    if validation is not None:
        train_rows, validation_rows = train, validation
    elif replicated:
        train_rows, validation_rows = holdout(train, config)
    else:
        train_rows, validation_rows = _global_holdout(train, config, group)
    if replicated and group.distributed:
        train_rows, validation_rows = share(train_rows, group), share(validation_rows, group)
        test = share(test, group) if test is not None else None
    device = _device(config.device)
    torch.manual_seed(config.seed)
    deterministic_algorithms(config.deterministic)

    preprocessor = agreed_preprocessor(train_rows, schema, config.target_transform, group)
    network = build_network(preprocessor.n_inputs, config.hidden_layers, config.dropout,
                            config.ensemble_size).to(device)
    # rows with many one-hot columns stay compact on a CPU (model/onehot_rows.py): no dense matrix at all
    layout = OneHotLayout.of(preprocessor.n_inputs, preprocessor.one_hot_blocks, device)
    x_train, y_train = group.agree(lambda: _tensors(preprocessor, train_rows, device, layout))
    x_val, y_val = group.agree(lambda: _tensors(preprocessor, validation_rows, device, layout))
    val_truth = target_values(validation_rows, schema.target)
    held = _RowShare.of(len(x_train), group)
    validation_total = int(group.sum(np.array([len(x_val)]))[0])

    linear = not config.hidden_layers
    steps: _Steps = (_LeastSquaresSteps(network, x_train, y_train, preprocessor.one_hot_blocks, group, held)
                     if linear else
                     _AdamWSteps(network, x_train, y_train, config, group, held))
    if checkpointing is not None and group.distributed:
        checkpointing = _shared_checkpointing(checkpointing, group)
    checkpointer = Checkpointer(checkpointing, lambda: Identity(
        config.training_settings(), train.fingerprint(), validation.fingerprint() if validation is not None else None))
    progress = _Progress(float("inf"), 0, _state_copy(network))

    def take(position: Position, loss_sum: float, batch_order: torch.Tensor | None) -> Snapshot:
        # Reads `progress` when called: the early-stopping state as of the last finished epoch.
        return Snapshot(checkpointer.identity(), position, loss_sum, _state_copy(network),
                        steps.optimizer.state_dict(), batch_order, torch.get_rng_state(),
                        torch.cuda.get_rng_state_all() if device.type == "cuda" else [], progress.best_loss,
                        progress.best_epoch, progress.best_state, device.type)

    resumed = _resume(checkpointer, group)
    start, loss_sum = Position(0), 0.0
    if resumed is not None:
        _restore(resumed, network, steps, device)
        progress = _Progress(resumed.best_loss, resumed.best_epoch, resumed.best_network)
        start, loss_sum = resumed.position, resumed.loss_sum
    epoch = start.epochs_done
    history: list[EpochReport] = []
    for epoch in range(start.epochs_done + 1, config.epochs + 1):
        batch_order = steps.batch_order()   # before this epoch's permutation: a resumed run redraws it
        batches = steps.start_epoch()
        first = start.batches_done if epoch == start.epochs_done + 1 else 0
        total = loss_sum if first else 0.0
        for index in range(first, batches):
            here = Position(epoch - 1, index)
            checkpointer.between_steps(here, functools.partial(take, here, total, batch_order))
            total += steps.step(index)
        train_loss = steps.epoch_loss(total)
        with torch.inference_mode():
            scaled = steps.predict(x_val)
            scaled_sse = float(((scaled - y_val).double() ** 2).sum())
        predictions = preprocessor.decode_target(scaled.cpu().numpy())
        sums = group.sum(np.array([scaled_sse, float(((predictions - val_truth) ** 2).sum())])) / validation_total
        val_loss = float(sums[0])
        history.append(EpochReport(epoch, train_loss, val_loss, float(np.sqrt(sums[1]))))
        if on_epoch:
            on_epoch(history[-1])
        # The linear model is solved exactly in its first epoch; the MLPs stop early on the validation loss.
        # Rank 0's number decides for every rank: the sums are equal everywhere, and so must the decision be.
        monitored = group.broadcast(train_loss if linear else val_loss)
        best_loss = progress.best_loss
        if monitored < best_loss - 1e-9 * abs(best_loss if best_loss < float("inf") else 1.0):
            progress = _Progress(monitored, epoch, _state_copy(network))
        elif epoch - progress.best_epoch >= config.patience:
            break
        if steps.converged:
            break
    steps.finish()
    network.load_state_dict(progress.best_state)
    network.eval().cpu()

    # explanations' baseline: the mean encoded training row (numerics 0, one-hots at the level frequencies)
    regressor = Regressor(preprocessor, network, config,
                          baseline=tuple(_column_means(x_train, group).tolist()))
    # The training and validation rows are encoded already: their predictions come from x_train and x_val,
    # the bits regressor.predict() gives for the same rows (it encodes them the same way first).
    predicted = {"train": _predictions(regressor, x_train), "validation": _predictions(regressor, x_val)}
    # split conformal: the validation rows did not fit the weights, so their residuals calibrate intervals
    gathered = group.gather((predicted["validation"], val_truth))
    regressor.calibration = calibrate(np.concatenate([p for p, _ in gathered]),
                                      np.concatenate([t for _, t in gathered]), config.target_transform)
    metrics = {"train": scores(target_values(train_rows, schema.target), predicted["train"], group),
               "validation": scores(val_truth, predicted["validation"], group)}
    if test is not None:
        metrics["test"] = evaluate(regressor, test, group)
    training_rows = train.n_rows if replicated else int(group.sum(np.array([train.n_rows]))[0])
    regressor.info.update(_provenance(train, training_rows, schema, metrics, progress.best_epoch, epoch))
    return FitResult(regressor, metrics, progress.best_epoch, epoch, history)


def evaluate(regressor: Regressor, table: Table, group: Group | None = None) -> dict[str, float]:
    """rmse, mae, mape (%) and r2 of the regressor on a table that holds the target column; with a group,
    of the rows of every rank's table together (each rank holds a part)."""
    truth = target_values(table, regressor.target)
    return scores(truth, regressor.predict(table.select(regressor.feature_names)), group)   # drop_columns too


def scores(truth: np.ndarray, predicted: np.ndarray, group: Group | None = None) -> dict[str, float]:
    """evaluate()'s metrics of predictions against the truth (with a group: this rank's part of the rows)."""
    group = group or Group.single()
    if not group.distributed:
        error = predicted - truth
        total = float(((truth - truth.mean()) ** 2).sum())
        nonzero = truth != 0
        return {"rmse": _rmse(truth, predicted), "mae": float(np.abs(error).mean()),
                "mape": float(np.abs(error[nonzero] / truth[nonzero]).mean() * 100) if nonzero.any() else 0.0,
                "r2": 1 - float((error ** 2).sum()) / total if total > 0 else 0.0, "rows": float(len(truth))}
    rows, truth_sum = group.sum(np.array([len(truth), truth.sum()]))
    error = predicted - truth
    nonzero = truth != 0
    sse, sae, ape, n_nonzero, total = group.sum(np.array([
        (error ** 2).sum(), np.abs(error).sum(), np.abs(error[nonzero] / truth[nonzero]).sum(),
        nonzero.sum(), ((truth - truth_sum / rows) ** 2).sum()]))
    return {"rmse": float(np.sqrt(sse / rows)), "mae": float(sae / rows),
            "mape": float(ape / n_nonzero * 100) if n_nonzero else 0.0,
            "r2": 1 - float(sse / total) if total > 0 else 0.0, "rows": float(rows)}


def deterministic_algorithms(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=True) for the eager operations training runs.

    torch's function also sets torch._inductor.config.deterministic, and importing that config imports
    torch._dynamo and torch._inductor: ~1.2 s on the first call, for a setting that only torch.compile
    reads, which hyperplane never uses. The switch the eager kernels read is the same either way; when the
    inductor config is loaded already (something else compiles in this process), or a torch without that
    private switch is installed, torch's own function is called."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        switch(mode, warn_only=True)


def _member_loss(stacked: StackedEnsemble, batch: tuple[torch.Tensor | OneHotRows, torch.Tensor],
                 rows: int) -> torch.Tensor:
    """The members' own squared errors on this rank's rows (x, y) of a batch, summed and divided by `rows`
    (the rows of the whole batch, over all ranks) and the members: summed over ranks it is the batch's mean.
    Each member learns alone, none leans on the others. The loss's gradient is written into stacked.grad,
    computed by hand (model/stacked.py): autograd's backward to float rounding, without its overhead."""
    x, y = batch
    return stacked.squared_error_gradient(x, y, rows * stacked.members)


def _state_copy(network: nn.Module) -> StateDict:
    """The network's state_dict as tensors of their own (its parameters may be views of a stacked buffer)."""
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


@dataclass(frozen=True)
class _RowShare:
    """The training rows this rank holds: rows [offset, offset + count) of `total` over all ranks."""

    offset: int
    count: int
    total: int

    @classmethod
    def of(cls, count: int, group: Group) -> _RowShare:
        counts = group.gather(count)
        return cls(sum(counts[:group.rank]), count, sum(counts))

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch of global row numbers, as indices into its own rows."""
        if self.count == self.total:
            return batch
        held = batch[(batch >= self.offset) & (batch < self.offset + self.count)]
        return held - self.offset


def _rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


@dataclass(frozen=True)
class _Progress:
    """Early stopping's state: the best monitored loss so far, its epoch and the network's weights then."""

    best_loss: float
    best_epoch: int
    best_state: StateDict


class _Optimizer(Protocol):
    """What a checkpoint records of an optimiser: its state, in torch.optim's state_dict format."""

    def state_dict(self) -> StateDict: ...
    def load_state_dict(self, state: StateDict) -> None: ...


class _Steps(Protocol):
    """One model's optimiser steps: an epoch is `start_epoch()` steps, run one at a time by index."""

    @property
    def optimizer(self) -> _Optimizer: ...

    def batch_order(self) -> torch.Tensor | None: ...        # the batch-order generator's state
    def restore_batch_order(self, state: torch.Tensor | None) -> None: ...
    @property
    def converged(self) -> bool: ...                         # nothing left to learn: training ends

    def start_epoch(self) -> int: ...                        # draws the epoch's batches; their count
    def step(self, index: int) -> float: ...                 # one optimiser step; its row-weighted loss
    def epoch_loss(self, total: float) -> float: ...         # the epoch's mean training loss
    def predict(self, x: torch.Tensor | OneHotRows) -> torch.Tensor: ...   # scaled predictions (rows,), eval
    def finish(self) -> None: ...                            # training is over: the network is its own again


class _NoOptimizer:
    """The least-squares model's optimiser record: torch.optim.SGD(lr=0)'s state_dict (what checkpoints
    always held for it), without constructing a torch.optim optimiser (that imports torch._dynamo)."""

    def __init__(self, parameters: int) -> None:
        self._parameters = parameters

    def state_dict(self) -> StateDict:
        return {"state": {}, "param_groups": [{
            "lr": 0.0, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
            "foreach": None, "differentiable": False, "fused": None, "params": list(range(self._parameters))}]}

    def load_state_dict(self, state: StateDict) -> None:
        groups = state["param_groups"]
        if state["state"] or len(groups) != 1 or list(groups[0]["params"]) != list(range(self._parameters)):
            raise ValueError("the optimiser state is not a least-squares run's")


class _LeastSquaresSteps:
    """The linear model solved in one step: the normal equations A^T A w = A^T y of the encoded rows with a
    bias column, summed in float64 over row blocks (model/normal_equations.py: between one-hot blocks they
    are counts) and over ranks (sums are all a rank contributes), then solved by SVD for the minimum-norm
    solution (the one-hot columns of a categorical feature are collinear with the bias, so A^T A is
    singular). The exact least-squares optimum, as numpy.linalg.lstsq gives it, in one pass over the rows;
    no optimiser state, no batch order."""

    # rows converted to float64 at a time: at most BLOCK_ROWS, and fewer for wide dense rows, so that a
    # block holds at most BLOCK_VALUES values (64 MiB)
    BLOCK_ROWS = 65_536
    BLOCK_VALUES = 1 << 23

    def __init__(self, network: nn.Module, x: torch.Tensor | OneHotRows, y: torch.Tensor,
                 one_hot: Sequence[tuple[int, int]], group: Group, share: _RowShare) -> None:
        layer = next(module for module in network.modules() if isinstance(module, nn.Linear))
        self.optimizer = _NoOptimizer(len(list(network.parameters())))   # what a checkpoint records: nothing
        self._network, self._layer, self._x, self._y, self._group, self._share = network, layer, x, y, group, share
        self._one_hot = one_hot
        self.converged = False

    def batch_order(self) -> torch.Tensor | None:
        return None

    def restore_batch_order(self, state: torch.Tensor | None) -> None:
        if state is not None:
            raise ValueError("a least-squares run has no batch order")

    def start_epoch(self) -> int:
        return 1

    def step(self, index: int) -> float:
        columns = self._layer.in_features + 1
        gram = torch.zeros(columns, columns, dtype=torch.float64, device=self._y.device)
        moment = torch.zeros(columns, dtype=torch.float64, device=self._y.device)
        block_rows = self.BLOCK_ROWS if isinstance(self._x, OneHotRows) else \
            max(1, min(self.BLOCK_ROWS, self.BLOCK_VALUES // columns))
        for start in range(0, len(self._x), block_rows):
            block_gram, block_moment = normal_equations(self._x[start:start + block_rows],
                                                        self._y[start:start + block_rows], self._one_hot)
            gram += block_gram
            moment += block_moment
        self._group.sum_tensors_([gram, moment])
        if gram.device.type == "cpu":
            weights = torch.linalg.lstsq(gram, moment[:, None], driver="gelsd").solution[:, 0]
        else:   # gelsd is CPU-only; the pseudo-inverse is the same minimum-norm solution
            weights = torch.linalg.pinv(gram, hermitian=True) @ moment
        with torch.no_grad():
            self._layer.weight.copy_(weights[:-1].to(self._layer.weight.dtype)[None, :])
            self._layer.bias.copy_(weights[-1:].to(self._layer.bias.dtype))
            squared = sum(float(((self._outputs(self._x[start:start + block_rows])
                                  - self._y[start:start + block_rows]).double() ** 2).sum())
                          for start in range(0, len(self._x), block_rows))
        self.converged = True
        return float(self._group.sum(np.array([squared]))[0]) / max(self._share.total, 1)

    def epoch_loss(self, total: float) -> float:
        return total

    def predict(self, x: torch.Tensor | OneHotRows) -> torch.Tensor:
        self._network.eval()
        return self._outputs(x) if isinstance(x, OneHotRows) else predict_mean(self._network, x)

    def finish(self) -> None:
        pass

    def _outputs(self, x: torch.Tensor | OneHotRows) -> torch.Tensor:
        """The linear layer's output for the rows, (rows,)."""
        if isinstance(x, OneHotRows):
            out = torch.empty(1, len(x), dtype=self._layer.weight.dtype)
            return first_layer(self._layer.weight, self._layer.bias[:, None], x, out)[0]
        outputs: torch.Tensor = self._layer(x)
        return outputs[:, 0]


class _AdamWSteps:
    """AdamW on shuffled mini-batches, one step per batch. The ensemble trains as one stacked computation
    (model/stacked.py: one batched matmul per layer for all members, all parameters and gradients in one
    flat buffer, one AdamW update for all of them) while the network's modules and state_dict stay as
    they are. Compact rows (model/onehot_rows.py) train as dense ones do, the first layer's products
    skipping their zeros."""

    def __init__(self, network: nn.Module, x: torch.Tensor | OneHotRows, y: torch.Tensor, config: TrainingConfig,
                 group: Group, share: _RowShare) -> None:
        self._stacked = StackedEnsemble.of(network)
        self.optimizer = FlatAdamW(self._stacked, lr=config.learning_rate, weight_decay=config.weight_decay)
        self._order = torch.Generator().manual_seed(config.seed)   # on the CPU: CPU and GPU runs see one order
        self._x, self._y, self._batch_size = x, y, config.batch_size
        self._group, self._share = group, share
        self._batches: list[torch.Tensor] = []
        self.converged = False   # mini-batch training ends by early stopping or the epoch limit

    def batch_order(self) -> torch.Tensor | None:
        return self._order.get_state()

    def restore_batch_order(self, state: torch.Tensor | None) -> None:
        if state is None:
            raise ValueError("a mini-batch run needs its batch-order state")
        self._order.set_state(state)

    def start_epoch(self) -> int:
        # over the rows of all ranks: every rank draws the same batches
        self._batches = list(torch.randperm(self._share.total, generator=self._order).split(self._batch_size))
        return len(self._batches)

    def step(self, index: int) -> float:
        batch = self._batches[index]
        rows = self._share.local(batch).to(self._y.device)
        x = self._x.index_select(rows) if isinstance(self._x, OneHotRows) else self._x.index_select(0, rows)
        loss = _member_loss(self._stacked, (x, self._y.index_select(0, rows)), len(batch))
        if self._group.distributed:
            # the gradients and the loss summed over ranks in one flat all-reduce: the whole batch's
            total = loss.reshape(1).clone()
            self._group.sum_tensors_([self._stacked.grad, total])
            batch_loss = float(total[0])
        else:
            batch_loss = float(loss)
        self.optimizer.step()
        return batch_loss * len(batch)

    def epoch_loss(self, total: float) -> float:
        return total / self._share.total

    def predict(self, x: torch.Tensor | OneHotRows) -> torch.Tensor:
        return self._stacked.predict_mean(x)

    def finish(self) -> None:
        self._stacked.release()


def _restore(snapshot: Snapshot, network: nn.Module, steps: _Steps, device: torch.device) -> None:
    """Puts the run back where the snapshot was taken: weights, optimiser, batch order and RNGs."""
    if snapshot.device != device.type:
        log.warning("the checkpoint was written on %s and this run uses %s: the resumed model will be close to, "
                    "but not bit-identical with, an uninterrupted run", snapshot.device, device.type)
    try:
        network.load_state_dict(snapshot.network)
        steps.optimizer.load_state_dict(snapshot.optimizer)
        steps.restore_batch_order(snapshot.batch_order)
        torch.set_rng_state(snapshot.torch_rng)
        if device.type == "cuda" and len(snapshot.cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(snapshot.cuda_rng)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"the checkpoint does not fit this model and cannot be resumed from "
                              f"({type(error).__name__}: {str(error).strip().splitlines()[0]}); delete it (or "
                              "use a new checkpoint folder) to train from the start") from error


def holdout(table: Table, config: TrainingConfig) -> tuple[Table, Table]:
    validation = _validation_rows(table.n_rows, config)
    kept = np.ones(table.n_rows, dtype=bool)
    kept[validation] = False
    return table.take(np.flatnonzero(kept)), table.take(validation)


def _validation_rows(n_rows: int, config: TrainingConfig) -> np.ndarray:
    """The sorted row numbers of the validation split drawn from `n_rows` rows."""
    if n_rows < 2:
        raise DataError(f"need at least 2 training rows to hold out a validation split, got {n_rows}")
    order = np.random.default_rng(config.seed).permutation(n_rows)
    n_validation = min(n_rows - 1, max(1, round(n_rows * config.validation_fraction)))
    return np.sort(order[:n_validation])


def _global_holdout(table: Table, config: TrainingConfig, group: Group) -> tuple[Table, Table]:
    """holdout() over the rows of all ranks in rank order; each rank gets its own rows of both splits."""
    counts = group.gather(table.n_rows)
    offset = sum(counts[:group.rank])
    validation = _validation_rows(sum(counts), config)
    mine = validation[(validation >= offset) & (validation < offset + table.n_rows)] - offset
    kept = np.ones(table.n_rows, dtype=bool)
    kept[mine] = False
    return table.take(np.flatnonzero(kept)), table.take(mine)


def share(table: Table, group: Group) -> Table:
    """Rank r's contiguous share of a table every rank holds whole (its rows in rank order are the table)."""
    bounds = [table.n_rows * rank // group.world_size for rank in range(group.world_size + 1)]
    return table.take(np.arange(bounds[group.rank], bounds[group.rank + 1]))


def _column_means(x: torch.Tensor | OneHotRows, group: Group) -> np.ndarray:
    column_sums = x.column_sums() if isinstance(x, OneHotRows) else x.sum(dim=0, dtype=torch.float64)
    sums = group.sum(np.concatenate([column_sums.cpu().numpy(), [len(x)]]))
    return np.asarray(sums[:-1] / sums[-1])


def _shared_checkpointing(settings: Checkpointing, group: Group) -> Checkpointing:
    """Checkpointing for one rank of several: a stop on any rank stops all at the same step, and only rank
    0 writes (every rank holds the same model and optimiser state)."""
    local = settings.stop_requested
    return dataclasses.replace(settings, stop_requested=lambda: group.any(local()), writes=group.leader)


def _resume(checkpointer: Checkpointer, group: Group) -> Snapshot | None:
    """The checkpoint to go on from: rank 0 reads it and hands it (or its refusal) to every rank."""
    if not group.distributed:
        return checkpointer.resume()
    outcome: Snapshot | str | None = None
    if group.leader:
        try:
            outcome = checkpointer.resume()
        except CheckpointError as error:
            outcome = str(error)
    outcome = group.broadcast(outcome)
    if isinstance(outcome, str):
        raise CheckpointError(outcome)
    return outcome


def _check_same_columns(train: Table, other: Table, name: str) -> None:
    if other.names != train.names:
        raise DataError(f"the {name} data has columns {', '.join(other.names)} but the training data has "
                        f"{', '.join(train.names)}")
    if other.n_rows == 0:
        raise DataError(f"the {name} data has no rows")


def encoded_rows(preprocessor: Preprocessor, table: Table, layout: OneHotLayout | None) -> torch.Tensor | OneHotRows:
    """The table's encoded rows on the CPU: compact with a layout (model/onehot_rows.py), else dense."""
    if layout is None:
        return torch.from_numpy(preprocessor.encode(table))
    numbers, hot = preprocessor.encode_compact(table)
    return OneHotRows(layout, torch.from_numpy(numbers), torch.from_numpy(hot))


def _tensors(preprocessor: Preprocessor, table: Table, device: torch.device,
             layout: OneHotLayout | None) -> tuple[torch.Tensor | OneHotRows, torch.Tensor]:
    """The table's encoded rows, on `device` (compact ones stay on the CPU, as layouts are made only there),
    and its scaled target."""
    x = encoded_rows(preprocessor, table, layout)
    if isinstance(x, torch.Tensor):
        x = x.to(device)
    return x, torch.from_numpy(preprocessor.encode_target(table)).to(device)


def _predictions(regressor: Regressor, x: torch.Tensor | OneHotRows) -> np.ndarray:
    """regressor.predict_encoded of the rows: the same bits as regressor.predict() of their table. Compact
    rows are expanded a chunk at a time; a chunk is a whole number of FusedEnsemble's blocks and none is
    left with NUMPY_ROWS rows or fewer (predict_encoded takes another route for so few), so every block
    holds the rows it holds in one call."""
    if not isinstance(x, OneHotRows):
        return regressor.predict_encoded(x.cpu().numpy())
    chunk = FusedEnsemble.BLOCK_ROWS * 16
    starts = list(range(0, len(x), chunk))
    if len(starts) > 1 and len(x) - starts[-1] <= FusedEnsemble.NUMPY_ROWS:
        starts.pop()   # the last few rows go with the chunk before them
    ends = [*starts[1:], len(x)]
    return np.concatenate([regressor.predict_encoded(x[start:end].expand().numpy())
                           for start, end in zip(starts, ends, strict=True)])


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DataError("device=cuda was asked for but no CUDA device is visible")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _provenance(train: Table, training_rows: int, schema: Schema, metrics: dict[str, dict[str, float]],
                best_epoch: int, epochs_run: int) -> dict[str, object]:
    try:
        own_version = importlib.metadata.version("hyperplane")
    except importlib.metadata.PackageNotFoundError:
        own_version = "unknown"
    return {"metrics": metrics, "best_epoch": best_epoch, "epochs_run": epochs_run,
            "data_fingerprint": train.fingerprint(), "training_rows": training_rows,
            "features": len(schema.features),
            "versions": {"hyperplane": own_version, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}
