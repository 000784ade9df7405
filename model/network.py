"""The network: the linear model (the hyperplane of best fit) or an ensemble of MLPs.

`build_network(n_inputs, ())` is one linear layer. With hidden layers it is `members` independent ReLU
MLPs side by side: each sees the same inputs, is initialised differently and is trained on its own
loss; the prediction is their mean. On the used-car data a single MLP is no better than the linear model
(its test error swings by +-10% with the seed), while the mean of five beats it (docs/model-defaults.md).

The forward pass returns one column per member, shape (rows, members); `predict` takes the row mean.
"""

from __future__ import annotations

from collections.abc import Sequence

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
