"""fit(): from training (and optional validation and test) tables to a Regressor and its metrics.

    result = fit(train_table, TrainingConfig(hidden_layers=()), on_epoch=print)

The validation rows come from the `validation` table or, without one, a seeded hold-out of the training
table. Preprocessing is fitted on the training rows only. The linear model is solved to the least-squares
optimum with full-batch L-BFGS (one L-BFGS step per epoch) and stops when the training loss no longer
improves, as the closed form would. The MLPs train with AdamW on shuffled mini-batches and stop when the
validation loss has not improved for `patience` epochs, keeping the best epoch's weights.
Same seed and data, same model: the split, the initial weights and the batch order all come from `seed`,
and torch runs in deterministic mode.
"""

from __future__ import annotations

import copy
import importlib.metadata
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.config import TrainingConfig
from model.errors import DataError
from model.network import build_network, predict_mean
from model.preprocessing import Preprocessor, fit_preprocessor, target_values
from model.regressor import Regressor
from model.schema import Schema, infer_schema
from model.table import Table


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
        on_epoch: Callable[[EpochReport], None] | None = None) -> FitResult:
    schema = infer_schema(train, config.target, config.categorical_columns, config.drop_columns)
    for name, table in (("validation", validation), ("test", test)):
        if table is not None:
            _check_same_columns(train, table, name)
    train_rows, validation_rows = (train, validation) if validation is not None else _holdout(train, config)
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
    step = (_lbfgs_epoch(network, x_train, y_train) if linear
            else _adamw_epoch(network, x_train, y_train, config))
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(network.state_dict())
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        train_loss = step()
        network.eval()
        with torch.inference_mode():
            scaled = predict_mean(network, x_val)
            val_loss = float(nn.functional.mse_loss(scaled, y_val))
        predictions = preprocessor.decode_target(scaled.cpu().numpy())
        if on_epoch:
            on_epoch(EpochReport(epoch, train_loss, val_loss, _rmse(val_truth, predictions)))
        # The linear model is least squares, so it runs to the training optimum; the MLPs stop early.
        monitored = train_loss if linear else val_loss
        if monitored < best_loss - 1e-9 * abs(best_loss if best_loss < float("inf") else 1.0):
            best_loss, best_epoch, best_state = monitored, epoch, copy.deepcopy(network.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    network.load_state_dict(best_state)
    network.eval().cpu()

    regressor = Regressor(preprocessor, network, config)
    splits = {"train": train_rows, "validation": validation_rows, **({"test": test} if test else {})}
    metrics = {name: evaluate(regressor, table) for name, table in splits.items()}
    regressor.info.update(_provenance(train, schema, metrics, best_epoch, epoch))
    return FitResult(regressor, metrics, best_epoch, epoch)


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


def _lbfgs_epoch(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    # A convex problem: full-batch L-BFGS reaches the least-squares optimum in a few dozen iterations.
    optimizer = torch.optim.LBFGS(network.parameters(), lr=1.0, max_iter=20, history_size=50,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _member_loss(network(x), y)
        loss.backward()
        return loss

    def epoch() -> float:
        network.train()
        return float(optimizer.step(closure).detach())

    return epoch


def _adamw_epoch(network: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 config: TrainingConfig) -> Callable[[], float]:
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(config.seed)   # on the CPU so CPU and GPU runs see the same order

    def epoch() -> float:
        network.train()
        total = 0.0
        for batch in torch.randperm(len(x), generator=order).split(config.batch_size):
            batch = batch.to(x.device)
            optimizer.zero_grad()
            loss = _member_loss(network(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total / len(x)

    return epoch


def _holdout(table: Table, config: TrainingConfig) -> tuple[Table, Table]:
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
