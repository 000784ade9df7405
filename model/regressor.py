"""Regressor: the fitted preprocessing and network together; a table of features in, predictions out.

Built by training.fit() or artifact.load(); serving holds one per worker and calls `predict`.
`calibration` (model/conformal.py) gives prediction intervals and `baseline` (the encoded training mean)
anchors explanations (model/explanation.py); both are None for artifacts older than them.

`predict` runs the network through its fused inference copy (network.FusedEnsemble, made on the first
prediction and remade whenever the weights change) when the network has the plain shape (up to
FusedEnsemble.NUMPY_ROWS rows on the CPU through its numpy route), else module by module; either way in
eval mode, which it leaves the network in, as it always has. `predict_encoded` is the
same computation on an already encoded matrix, for callers that encode rows themselves (the serving fast
path), so both give the same bits for the same rows.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import TrainingConfig
from model.conformal import Calibration
from model.errors import DataError
from model.network import FusedEnsemble, predict_mean
from model.preprocessing import Preprocessor
from model.schema import Kind
from model.table import Table

# network -> its fused inference copy, or None when its shape has none; weak, so a dropped network goes
# (kept beside the Regressor, not in it, so that its fields, equality and repr stay as they were)
_FUSED: weakref.WeakKeyDictionary[nn.Module, FusedEnsemble | None] = weakref.WeakKeyDictionary()


@dataclass
class Regressor:
    preprocessor: Preprocessor
    network: nn.Module
    config: TrainingConfig
    info: dict[str, Any] = field(default_factory=dict)   # metrics, data fingerprint, versions, version id
    calibration: Calibration | None = None                # split-conformal residuals of the validation split
    baseline: tuple[float, ...] | None = None              # encoded training mean, one value per network input

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.schema.feature_names

    @property
    def target(self) -> str:
        return self.preprocessor.schema.target

    @property
    def numeric_only(self) -> bool:
        return all(f.kind is Kind.NUMERIC for f in self.preprocessor.schema.features)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> Regressor:
        self.network.to(device)
        return self

    def predict(self, table: Table) -> np.ndarray:
        """float64 predictions in the target's units, one per row; DataError names the row and column."""
        self.check_columns(table)
        if table.n_rows == 0:
            return np.empty(0, dtype=np.float64)
        return self.predict_encoded(self.preprocessor.encode(table))

    def freeze(self) -> Regressor:
        """Promises that the network's weights will not change from here on (a serving worker's model), so
        that predict no longer checks its fused copy against them: ~30 calls into torch per prediction,
        which from a busy worker's cold caches cost more than the numpy arithmetic of one row."""
        self.network.eval()
        fused = _FUSED[self.network] = FusedEnsemble.of(self.network)
        if fused is not None:
            fused.frozen = True
        return self

    def predict_encoded(self, encoded: np.ndarray) -> np.ndarray:
        """Predictions for rows already encoded by `preprocessor.encode` (float32, (rows, n_inputs))."""
        network = self.network
        fused = self._fused()
        if fused is not None and fused.row_mean is not None and len(encoded) == 1:
            # the row's float32 values as Python floats, exactly: what predict_row gets for the same row
            return self.preprocessor.decode_one(fused.row_mean(encoded[0].tolist()))
        if fused is not None and fused.arrays is not None and len(encoded) <= fused.NUMPY_ROWS:
            return self.preprocessor.decode_target(fused.numpy_mean(encoded))
        with torch.inference_mode():
            inputs = torch.from_numpy(encoded)
            if fused is not None:
                scaled = fused(inputs.to(fused.weights[0].device)).cpu().numpy()
            else:
                scaled = predict_mean(network, inputs.to(self.device)).cpu().numpy()
        return self.preprocessor.decode_target(scaled)

    def predict_row(self, values: list[float]) -> np.ndarray:
        """predict_encoded of one row given as `preprocessor.encode_row`'s list, without making it an array
        first: where the fused ensemble has its one-row kernel (FusedEnsemble.row_mean) the list goes to
        it as is. The same prediction, bit for bit, as predict_encoded of that row."""
        fused = self._fused()
        if fused is not None and fused.row_mean is not None:
            return self.preprocessor.decode_one(fused.row_mean(values))
        return self.predict_encoded(np.array([values], dtype=np.float32))

    def _fused(self) -> FusedEnsemble | None:
        """The fused copy of the network, made again where its weights changed, with the network in eval
        mode where the copy cannot stand in for it."""
        network = self.network
        if network not in _FUSED or ((known := _FUSED[network]) is not None and known.stale()):
            _FUSED[network] = FusedEnsemble.of(network)
        fused = _FUSED[network]
        if network.training or fused is None:
            # eval() walks every module (~50 us on the default ensemble), so only when needed: the fused
            # copy computes in eval mode whatever the modules' flags say
            network.eval()
        return fused

    def check_columns(self, table: Table) -> None:
        expected = self.feature_names
        unknown = [name for name in table.names if name not in expected]
        if unknown:
            hint = " (it is the target, which inputs must leave out)" if unknown[0] == self.target else ""
            raise DataError(f"unknown feature {unknown[0]!r}{hint}; the features are {', '.join(expected)}",
                            column=unknown[0])
        missing = [name for name in expected if name not in table.columns]
        if missing:
            raise DataError(f"missing feature {missing[0]!r}; the features are {', '.join(expected)}",
                            column=missing[0])
