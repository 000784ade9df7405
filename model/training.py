"""fit(): from training (and optional validation and test) tables to a Regressor and its metrics.

    result = fit(train_table, TrainingConfig(hidden_layers=()), on_epoch=print)

The validation rows come from the `validation` table or, without one, a seeded hold-out of the training
table. Preprocessing is fitted on the training rows only. The linear model is solved to the least-squares
optimum with full-batch L-BFGS (one L-BFGS step per epoch) and stops when the training loss no longer
improves, as the closed form would. The MLPs train with AdamW on shuffled mini-batches and stop when the
validation loss has not improved for `patience` epochs, keeping the best epoch's weights.
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
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from model.checkpoint import CheckpointError, Identity, Position, Snapshot, StateDict
from model.checkpointing import Checkpointer, Checkpointing
from model.config import TrainingConfig
from model.conformal import calibrate
from model.errors import DataError
from model.network import build_network, predict_mean
from model.preprocessing import Preprocessor, fit_preprocessor, target_values
from model.regressor import Regressor
from model.schema import Schema, infer_schema
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


def fit(train: Table, config: TrainingConfig, validation: Table | None = None, test: Table | None = None,
        on_epoch: Callable[[EpochReport], None] | None = None,
        checkpointing: Checkpointing | None = None) -> FitResult:
    """Raises DataError for unusable data, CheckpointError for a checkpoint of another job or a damaged one,
    and TrainingStopped when checkpointing.stop_requested() turned true (after writing a checkpoint)."""
    schema = infer_schema(train, config.target, config.categorical_columns, config.drop_columns)
    for name, table in (("validation", validation), ("test", test)):
        if table is not None:
            _check_same_columns(train, table, name)
    train_rows, validation_rows = (train, validation) if validation is not None else holdout(train, config)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)

    preprocessor = fit_preprocessor(train_rows, schema, config.target_transform)
    network = build_network(preprocessor.n_inputs, config.hidden_layers, config.dropout,
                            config.ensemble_size).to(device)
    x_train, y_train = _tensors(preprocessor, train_rows, device)
    x_val, y_val = _tensors(preprocessor, validation_rows, device)
    val_truth = target_values(validation_rows, schema.target)

    linear = not config.hidden_layers
    steps: _Steps = _LBFGSSteps(network, x_train, y_train) if linear else _AdamWSteps(network, x_train, y_train,
                                                                                      config)
    checkpointer = Checkpointer(checkpointing, lambda: Identity(
        config.training_settings(), train.fingerprint(), validation.fingerprint() if validation is not None else None))
    progress = _Progress(float("inf"), 0, copy.deepcopy(network.state_dict()))

    def take(position: Position, loss_sum: float, batch_order: torch.Tensor | None) -> Snapshot:
        # Reads `progress` when called: the early-stopping state as of the last finished epoch.
        return Snapshot(checkpointer.identity(), position, loss_sum, network.state_dict(),
                        steps.optimizer.state_dict(), batch_order, torch.get_rng_state(),
                        torch.cuda.get_rng_state_all() if device.type == "cuda" else [], progress.best_loss,
                        progress.best_epoch, progress.best_state, device.type)

    resumed = checkpointer.resume()
    start, loss_sum = Position(0), 0.0
    if resumed is not None:
        _restore(resumed, network, steps, device)
        progress = _Progress(resumed.best_loss, resumed.best_epoch, resumed.best_network)
        start, loss_sum = resumed.position, resumed.loss_sum
    epoch = start.epochs_done
    for epoch in range(start.epochs_done + 1, config.epochs + 1):
        batch_order = steps.batch_order()   # before this epoch's permutation: a resumed run redraws it
        batches = steps.start_epoch()
        first = start.batches_done if epoch == start.epochs_done + 1 else 0
        total = loss_sum if first else 0.0
        for index in range(first, batches):
            here = Position(epoch - 1, index)
            checkpointer.between_steps(here, functools.partial(take, here, total, batch_order))
            network.train()
            total += steps.step(index)
        train_loss = steps.epoch_loss(total)
        network.eval()
        with torch.inference_mode():
            scaled = predict_mean(network, x_val)
            val_loss = float(nn.functional.mse_loss(scaled, y_val))
        predictions = preprocessor.decode_target(scaled.cpu().numpy())
        if on_epoch:
            on_epoch(EpochReport(epoch, train_loss, val_loss, _rmse(val_truth, predictions)))
        # The linear model is least squares, so it runs to the training optimum; the MLPs stop early.
        monitored = train_loss if linear else val_loss
        best_loss = progress.best_loss
        if monitored < best_loss - 1e-9 * abs(best_loss if best_loss < float("inf") else 1.0):
            progress = _Progress(monitored, epoch, copy.deepcopy(network.state_dict()))
        elif epoch - progress.best_epoch >= config.patience:
            break
    network.load_state_dict(progress.best_state)
    network.eval().cpu()

    # explanations' baseline: the mean encoded training row (numerics 0, one-hots at the level frequencies)
    regressor = Regressor(preprocessor, network, config,
                          baseline=tuple(x_train.double().mean(dim=0).cpu().tolist()))
    # split conformal: the validation rows did not fit the weights, so their residuals calibrate intervals
    regressor.calibration = calibrate(regressor.predict(validation_rows.select(regressor.feature_names)),
                                      val_truth, config.target_transform)
    splits = {"train": train_rows, "validation": validation_rows, **({"test": test} if test else {})}
    metrics = {name: evaluate(regressor, table) for name, table in splits.items()}
    regressor.info.update(_provenance(train, schema, metrics, progress.best_epoch, epoch))
    return FitResult(regressor, metrics, progress.best_epoch, epoch)


def evaluate(regressor: Regressor, table: Table) -> dict[str, float]:
    """rmse, mae, mape (%) and r2 of the regressor on a table that holds the target column."""
    truth = target_values(table, regressor.target)
    predicted = regressor.predict(table.select(regressor.feature_names))   # drop_columns too
    error = predicted - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    nonzero = truth != 0
    return {"rmse": _rmse(truth, predicted), "mae": float(np.abs(error).mean()),
            "mape": float(np.abs(error[nonzero] / truth[nonzero]).mean() * 100) if nonzero.any() else 0.0,
            "r2": 1 - float((error ** 2).sum()) / total if total > 0 else 0.0, "rows": float(table.n_rows)}


def _member_loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the members' own squared errors: each member learns alone, none leans on the others."""
    return nn.functional.mse_loss(outputs, y[:, None].expand_as(outputs))


def _rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


@dataclass(frozen=True)
class _Progress:
    """Early stopping's state: the best monitored loss so far, its epoch and the network's weights then."""

    best_loss: float
    best_epoch: int
    best_state: StateDict


class _Steps(Protocol):
    """One model's optimiser steps: an epoch is `start_epoch()` steps, run one at a time by index."""

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    def batch_order(self) -> torch.Tensor | None: ...        # the batch-order generator's state
    def restore_batch_order(self, state: torch.Tensor | None) -> None: ...
    def start_epoch(self) -> int: ...                        # draws the epoch's batches; their count
    def step(self, index: int) -> float: ...                 # one optimiser step; its row-weighted loss
    def epoch_loss(self, total: float) -> float: ...         # the epoch's mean training loss


class _LBFGSSteps:
    """Full-batch L-BFGS, one step per epoch. A convex problem: it reaches the least-squares optimum in a
    few dozen iterations."""

    def __init__(self, network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer = torch.optim.LBFGS(
            network.parameters(), lr=1.0, max_iter=20, history_size=50, tolerance_grad=1e-10,
            tolerance_change=1e-14, line_search_fn="strong_wolfe")
        self._network, self._x, self._y = network, x, y

    def batch_order(self) -> torch.Tensor | None:
        return None

    def restore_batch_order(self, state: torch.Tensor | None) -> None:
        if state is not None:
            raise ValueError("an L-BFGS run has no batch order")

    def start_epoch(self) -> int:
        return 1

    def step(self, index: int) -> float:
        return float(self.optimizer.step(self._closure).detach())

    def epoch_loss(self, total: float) -> float:
        return total

    def _closure(self) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = _member_loss(self._network(self._x), self._y)
        loss.backward()
        return loss


class _AdamWSteps:
    """AdamW on shuffled mini-batches, one step per batch."""

    def __init__(self, network: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainingConfig) -> None:
        self.optimizer = torch.optim.AdamW(
            network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self._order = torch.Generator().manual_seed(config.seed)   # on the CPU: CPU and GPU runs see one order
        self._network, self._x, self._y, self._batch_size = network, x, y, config.batch_size
        self._batches: list[torch.Tensor] = []

    def batch_order(self) -> torch.Tensor | None:
        return self._order.get_state()

    def restore_batch_order(self, state: torch.Tensor | None) -> None:
        if state is None:
            raise ValueError("a mini-batch run needs its batch-order state")
        self._order.set_state(state)

    def start_epoch(self) -> int:
        self._batches = list(torch.randperm(len(self._x), generator=self._order).split(self._batch_size))
        return len(self._batches)

    def step(self, index: int) -> float:
        batch = self._batches[index].to(self._x.device)
        self.optimizer.zero_grad()
        loss = _member_loss(self._network(self._x[batch]), self._y[batch])
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()) * len(batch)

    def epoch_loss(self, total: float) -> float:
        return total / len(self._x)


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
    if table.n_rows < 2:
        raise DataError(f"need at least 2 training rows to hold out a validation split, got {table.n_rows}")
    order = np.random.default_rng(config.seed).permutation(table.n_rows)
    n_validation = min(table.n_rows - 1, max(1, round(table.n_rows * config.validation_fraction)))
    return table.take(np.sort(order[n_validation:])), table.take(np.sort(order[:n_validation]))


def _check_same_columns(train: Table, other: Table, name: str) -> None:
    if other.names != train.names:
        raise DataError(f"the {name} data has columns {', '.join(other.names)} but the training data has "
                        f"{', '.join(train.names)}")
    if other.n_rows == 0:
        raise DataError(f"the {name} data has no rows")


def _tensors(preprocessor: Preprocessor, table: Table, device: torch.device) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(preprocessor.encode(table)).to(device),
            torch.from_numpy(preprocessor.encode_target(table)).to(device))


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DataError("device=cuda was asked for but no CUDA device is visible")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _provenance(train: Table, schema: Schema, metrics: dict[str, dict[str, float]], best_epoch: int,
                epochs_run: int) -> dict[str, object]:
    try:
        own_version = importlib.metadata.version("hyperplane")
    except importlib.metadata.PackageNotFoundError:
        own_version = "unknown"
    return {"metrics": metrics, "best_epoch": best_epoch, "epochs_run": epochs_run,
            "data_fingerprint": train.fingerprint(), "training_rows": train.n_rows,
            "features": len(schema.features),
            "versions": {"hyperplane": own_version, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}
