"""Regressor: the fitted preprocessing and network together; a table of features in, predictions out.

Built by training.fit() or artifact.load(); serving holds one per worker and calls `predict`.
`calibration` (model/conformal.py) gives prediction intervals and `baseline` (the encoded training mean)
anchors explanations (model/explanation.py); both are None for artifacts older than them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import TrainingConfig
from model.conformal import Calibration
from model.errors import DataError
from model.network import predict_mean
from model.preprocessing import Preprocessor
from model.schema import Kind
from model.table import Table


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
        inputs = torch.from_numpy(self.preprocessor.encode(table)).to(self.device)
        self.network.eval()
        with torch.inference_mode():
            scaled = predict_mean(self.network, inputs).cpu().numpy()
        return self.preprocessor.decode_target(scaled)

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
