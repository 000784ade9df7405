"""Per-feature explanations of predictions: base + sum(attributions) == prediction, in the target's units.

    explainer = Explainer(regressor)         # ExplanationUnavailableError for artifacts without a baseline
    attributions = explainer.explain(table)  # (rows, features) float64, features in schema order
    explainer.base                           # the model's prediction at the baseline

The baseline is the encoded training mean (`Regressor.baseline`, computed by training.fit): standardised
numerics at 0 (their training mean), each categorical's one-hot columns at the training frequencies of its
levels. Attributions are computed per encoded column and summed per original feature, so a categorical
feature is one entry whatever its one-hot width.

- linear model, target_transform=none: the prediction is affine in the encoded row, so the attribution of a
  column is exactly scale * w_j * (x_j - baseline_j) (closed form; completeness up to float rounding);
- otherwise (MLP ensembles, or the log target, where exp makes even the linear model non-linear in price):
  integrated gradients of the prediction in target units along the straight path from the baseline to the
  row, the trapezoid rule over STEPS intervals, all points of a chunk of rows in one forward and one
  backward pass. The network runs in float64 here (a copy), so the quadrature, not float32 rounding,
  bounds the completeness gap |base + sum - prediction|. A ReLU network's gradient jumps where a unit
  switches on the path, which the trapezoid rule only resolves to within a step: a row whose gap exceeds
  TOLERANCE of |prediction - base| is integrated again with 4x the steps, up to MAX_STEPS (on the used
  cars 64 steps suffice for ~99% of rows; the rest need 256 to 1024). The served prediction comes from
  the float32 network, whose rounding (about 1e-6 of the prediction) adds to the gap: it matters only for a
  row whose prediction lies within a few units of the base.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from model.network import predict_mean
from model.regressor import Regressor
from model.schema import Kind
from model.table import Table

STEPS = 64             # trapezoid intervals along the path, first try
MAX_STEPS = 4096       # the finest refinement; a row still off by more than TOLERANCE keeps that result
TOLERANCE = 0.005      # of |prediction - base|: half the 1% promised, leaving room for float32 predictions
POINTS_PER_PASS = 8192  # path points per forward/backward (rows per chunk = this // (steps + 1))


class ExplanationUnavailableError(Exception):
    """The artifact predates explanations: it has no baseline."""


class Explainer:
    def __init__(self, regressor: Regressor) -> None:
        if regressor.baseline is None:
            raise ExplanationUnavailableError("the model has no explanation baseline")
        self._preprocessor = regressor.preprocessor
        self._device = regressor.device
        # float64 copy: float32 gradients summed over the path would add an error of their own
        self._network = copy.deepcopy(regressor.network).double().eval()
        self._baseline = torch.tensor(regressor.baseline, dtype=torch.float64, device=self._device)
        self._groups = torch.from_numpy(_feature_groups(regressor)).to(self._device)   # (inputs, features)
        self._closed_form = not regressor.config.hidden_layers and self._preprocessor.target_transform == "none"
        self.features = tuple(regressor.feature_names)
        with torch.no_grad():
            self.base = float(self._prediction(self._baseline[None])[0])

    def explain(self, table: Table) -> np.ndarray:
        """(rows, features) attributions in the target's units; row i sums to prediction_i - base."""
        inputs = torch.from_numpy(self._preprocessor.encode(table)).to(self._device, torch.float64)
        with torch.no_grad():
            delta = inputs - self._baseline
        if self._closed_form:
            weight = next(iter(self._network.parameters()))   # the only layer's (1, inputs) weight
            slopes = (weight[0] * self._preprocessor.target_scale[1]).detach()
            return ((delta * slopes) @ self._groups).cpu().numpy()
        with torch.no_grad():
            change = self._prediction(inputs) - self.base
        per_column = delta * self._mean_gradient(inputs, STEPS)
        steps = STEPS
        while steps < MAX_STEPS:
            gap = (per_column.sum(dim=1) - change).abs()
            again = torch.nonzero(gap > TOLERANCE * change.abs()).flatten()
            if len(again) == 0:
                break
            steps *= 4
            per_column[again] = delta[again] * self._mean_gradient(inputs[again], steps)
        return (per_column @ self._groups).cpu().numpy()

    def _prediction(self, inputs: torch.Tensor) -> torch.Tensor:
        """The prediction in the target's units, differentiable: decode_target in torch."""
        mean, std = self._preprocessor.target_scale
        values = predict_mean(self._network, inputs) * std + mean
        return torch.exp(values) if self._preprocessor.target_transform == "log" else values

    def _mean_gradient(self, inputs: torch.Tensor, steps: int) -> torch.Tensor:
        """The path average of the gradient, per row: trapezoid weights over steps + 1 points."""
        alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=self._device)
        weights = torch.full_like(alphas, 1.0 / steps)
        weights[[0, -1]] = 0.5 / steps
        rows_per_pass = max(1, POINTS_PER_PASS // (steps + 1))
        averages = []
        with torch.enable_grad():
            for chunk in inputs.split(rows_per_pass):
                points = (self._baseline + alphas[None, :, None] * (chunk - self._baseline)[:, None, :])
                points = points.reshape(-1, chunk.shape[1]).requires_grad_(True)
                # rows are independent, so the gradient of the sum is each point's own gradient
                (gradients,) = torch.autograd.grad(self._prediction(points).sum(), points)
                averages.append((gradients.reshape(len(chunk), steps + 1, -1) * weights[None, :, None]).sum(1))
        return torch.cat(averages)


def _feature_groups(regressor: Regressor) -> np.ndarray:
    """(encoded inputs, features) 0/1 matrix: which encoded columns make up each feature."""
    preprocessor = regressor.preprocessor
    widths = [1 if f.kind is Kind.NUMERIC else 1 + len(preprocessor.categories[f.name])
              for f in preprocessor.schema.features]
    groups = np.zeros((sum(widths), len(widths)), dtype=np.float64)
    start = 0
    for index, width in enumerate(widths):
        groups[start:start + width, index] = 1.0
        start += width
    return groups
