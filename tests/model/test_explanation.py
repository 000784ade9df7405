"""Explanations: base + sum(attributions) == prediction (exactly for the linear model in target units,
within 1% of |prediction - base| by integrated gradients otherwise), one entry per original feature, and a
baseline that is the encoded training mean and survives the artifact."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from model import artifact
from model.config import TrainingConfig
from model.explanation import Explainer, ExplanationUnavailableError
from model.regressor import Regressor
from model.schema import Kind
from model.table import Table
from model.training import fit
from tests.conftest import read_cars

MODELS = {
    "linear-none": TrainingConfig(hidden_layers=(), target_transform="none"),
    "linear-log": TrainingConfig(hidden_layers=()),
    "mlp-none": TrainingConfig(hidden_layers=(16,), ensemble_size=2, epochs=10, target_transform="none"),
    "mlp-log": TrainingConfig(hidden_layers=(16, 8), ensemble_size=2, epochs=10),
}


@pytest.fixture(scope="module")
def cars_split() -> tuple[Table, Table]:
    cars = read_cars()
    return cars.take(np.arange(0, 1000)), cars.take(np.arange(1000, 1200)).without("Price")


@pytest.fixture(scope="module")
def models(cars_split: tuple[Table, Table]) -> dict[str, Regressor]:
    return {name: fit(cars_split[0], config).regressor for name, config in MODELS.items()}


@pytest.mark.parametrize("name", MODELS)
def test_base_plus_attributions_is_the_prediction(models: dict[str, Regressor], cars_split: tuple[Table, Table],
                                                  name: str) -> None:
    regressor, rows = models[name], cars_split[1]
    explainer = Explainer(regressor)
    attributions = explainer.explain(rows)
    predictions = regressor.predict(rows)
    assert attributions.shape == (rows.n_rows, len(regressor.feature_names))   # one entry per feature
    assert explainer.features == tuple(regressor.feature_names)
    gap = np.abs(explainer.base + attributions.sum(axis=1) - predictions)
    if name == "linear-none":   # closed form: exact up to float32 rounding of the served prediction
        np.testing.assert_allclose(gap, 0, atol=1e-6 * np.abs(predictions).max())
    else:
        # 1% of the change, plus float32 rounding of the served prediction (explanations run in float64)
        assert np.all(gap <= 0.01 * np.abs(predictions - explainer.base) + 1e-5 * predictions), (name, gap.max())


def test_base_is_the_prediction_at_the_baseline(models: dict[str, Regressor]) -> None:
    for regressor in models.values():
        assert regressor.baseline is not None
        explainer = Explainer(regressor)
        baseline = np.asarray(regressor.baseline, dtype=np.float32)[None]
        scaled = regressor.network(torch.from_numpy(baseline)).mean(dim=1).detach().numpy()
        assert explainer.base == pytest.approx(float(regressor.preprocessor.decode_target(scaled)[0]), rel=1e-5)


def test_a_categorical_feature_is_one_entry(models: dict[str, Regressor], cars_split: tuple[Table, Table]) -> None:
    """Two rows that differ only in Color: only Color's attribution differs, by the prediction's change."""
    regressor = models["linear-none"]
    rows = cars_split[1].take(np.array([0, 0]))
    colors = rows.columns["Color"].copy()
    colors[1] = "Red" if colors[0] != "Red" else "Blue"
    rows = Table({**rows.columns, "Color": colors})
    attributions = Explainer(regressor).explain(rows)
    difference = attributions[1] - attributions[0]
    color = regressor.feature_names.index("Color")
    assert np.all(np.delete(np.abs(difference), color) < 1e-9)
    predictions = regressor.predict(rows)
    assert difference[color] == pytest.approx(predictions[1] - predictions[0], abs=1e-3)


def test_the_baseline_is_the_encoded_training_mean(models: dict[str, Regressor], tmp_path: pathlib.Path) -> None:
    regressor = models["mlp-log"]
    assert regressor.baseline is not None
    baseline, start = np.asarray(regressor.baseline), 0
    for feature in regressor.preprocessor.schema.features:
        width = 1 if feature.kind is Kind.NUMERIC else 1 + len(regressor.preprocessor.categories[feature.name])
        block = baseline[start:start + width]
        if feature.kind is Kind.NUMERIC:
            assert abs(block[0]) < 1e-6           # standardised: the training mean is 0
        else:
            assert block.sum() == pytest.approx(1.0) and np.all(block >= 0)   # level frequencies
        start += width
    artifact.save(regressor, tmp_path)
    assert artifact.load(tmp_path).baseline == regressor.baseline


def test_a_model_without_baseline_cannot_explain(models: dict[str, Regressor]) -> None:
    regressor = models["linear-none"]
    with pytest.raises(ExplanationUnavailableError):
        Explainer(Regressor(regressor.preprocessor, regressor.network, regressor.config))
