"""Fixtures for the in-process server tests: two small trained models, saved and loaded back as the
server loads them, and Flask test clients around them; and user handler modules written to tmp_path.

    mixed_model    the used cars with their categorical columns (Fuel_Type, Color)
    numeric_model  the same cars without them, so application/x-npy is accepted
    write_handlers write_handlers(source) -> settings whose user_code is that module (in tmp_path/code)
    handlers_for   handlers_for(source, **settings) -> a test client serving the module's handlers
    start          start(base_dir, command=(), **environ) -> a `serve` subprocess (process.Server), stopped
                   after the test
"""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence

import pytest
from flask.testing import FlaskClient

from container.serving.app import LoadedPredictor, create_app
from container.serving.handlers import UserHandlers
from container.serving.limits import RequestLimits
from container.serving.predictor import Predictor
from container.serving.settings import ServingSettings
from container.serving.user_code import UserCode
from model import artifact
from model.config import TrainingConfig
from model.regressor import Regressor
from model.table import Table
from model.training import fit
from tests.serving.process import Server, StartServer

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
        settings = make_settings(tmp_path, **overrides)
        predictor = Predictor(regressor, limits=RequestLimits.from_settings(settings))
        return create_app(settings, LoadedPredictor(predictor)).test_client()
    return make


@pytest.fixture
def client(client_for: ClientFactory, mixed_model: Regressor) -> FlaskClient:
    return client_for(mixed_model)


@pytest.fixture
def numeric_client(client_for: ClientFactory, numeric_model: Regressor) -> FlaskClient:
    return client_for(numeric_model)


HandlersWriter = Callable[..., ServingSettings]


@pytest.fixture
def write_handlers(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HandlersWriter]:
    """write_handlers(source, module="inference", **settings): the module in tmp_path/code, and settings
    that serve it. sys.path, sys.modules and SAGEMAKER_PROGRAM, which loading changes, are restored."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("SAGEMAKER_PROGRAM", os.environ.get("SAGEMAKER_PROGRAM", "restored-after-the-test"))
    modules: list[str] = []

    def write(source: str, module: str = "inference", **overrides: object) -> ServingSettings:
        folder = tmp_path / "code"
        folder.mkdir(exist_ok=True)
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
        (tmp_path / "model").mkdir(exist_ok=True)
        modules.append(module)
        code = UserCode(folder, module, f"{module}.py", "the model's code/ folder", None)
        return make_settings(tmp_path, user_code=code, **overrides)

    yield write
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture
def handlers_for(write_handlers: HandlersWriter) -> ClientFactory:
    """handlers_for(source, **settings) -> a test client whose worker has loaded the module's handlers."""
    def make(source: str, **overrides: object) -> FlaskClient:
        settings = write_handlers(source, **overrides)
        return create_app(settings, LoadedPredictor(UserHandlers.load(settings, gpu_id=None))).test_client()
    return make


@pytest.fixture
def start(tmp_path: pathlib.Path) -> Iterator[StartServer]:
    servers: list[Server] = []

    def start_server(base_dir: pathlib.Path, command: Sequence[str] = (), **environ: str) -> Server:
        servers.append(Server(base_dir, tmp_path, command, **environ))
        return servers[-1]

    yield start_server
    for server in servers:
        server.stop()
