"""Fixtures for the in-process server tests: two small trained models, saved and loaded back as the
server loads them, and Flask test clients around them.

    mixed_model    the used cars with their categorical columns (Fuel_Type, Color)
    numeric_model  the same cars without them, so application/x-npy is accepted
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from container.serving.app import LoadedPredictor, create_app
from container.serving.predictor import Predictor
from container.serving.settings import ServingSettings
from model import artifact
from model.config import TrainingConfig
from model.regressor import Regressor
from model.table import Table
from model.training import fit

FAST = TrainingConfig(hidden_layers=(8,), ensemble_size=1, epochs=3)


def _train(table: Table, folder: pathlib.Path, **config: object) -> Regressor:
    result = fit(table, TrainingConfig.from_dict({**FAST.to_dict(), **config}))
    artifact.save(result.regressor, folder)
    return artifact.load(folder)   # as the server sees it: from the file, with info["version"]


@pytest.fixture(scope="session")
def mixed_model_dir(small_cars: Table, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("mixed-model")
    _train(small_cars, folder)
    return folder


@pytest.fixture(scope="session")
def mixed_model(mixed_model_dir: pathlib.Path) -> Regressor:
    return artifact.load(mixed_model_dir)


@pytest.fixture(scope="session")
def numeric_model(small_cars: Table, tmp_path_factory: pytest.TempPathFactory) -> Regressor:
    numeric = small_cars.select([name for name in small_cars.names if name not in ("Fuel_Type", "Color")])
    model = _train(numeric, tmp_path_factory.mktemp("numeric-model"))
    assert model.numeric_only
    return model


def make_settings(tmp_path: pathlib.Path, **overrides: object) -> ServingSettings:
    values: dict[str, object] = {"model_dir": tmp_path / "model", "readiness_dir": tmp_path / "ready",
                                 "workers": 2, **overrides}
    return ServingSettings(**values)  # type: ignore[arg-type]


ClientFactory = Callable[..., FlaskClient]


@pytest.fixture
def client_for(tmp_path: pathlib.Path) -> ClientFactory:
    """client_for(regressor, **settings) -> a test client of an app whose model is loaded."""
    def make(regressor: Regressor, **overrides: object) -> FlaskClient:
        app = create_app(make_settings(tmp_path, **overrides), LoadedPredictor(Predictor(regressor)))
        return app.test_client()
    return make


@pytest.fixture
def client(client_for: ClientFactory, mixed_model: Regressor) -> FlaskClient:
    return client_for(mixed_model)


@pytest.fixture
def numeric_client(client_for: ClientFactory, numeric_model: Regressor) -> FlaskClient:
    return client_for(numeric_model)
