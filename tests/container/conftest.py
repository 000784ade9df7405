"""Fixtures for the image tests: the images built by scripts/build-images, and a model the training
image trained, for the serving tests."""

from __future__ import annotations

import pathlib

import pytest

from tests.container.docker import build_images, run_job
from tests.jobs import CARS_HEADER, CARS_LINES, Job, lay_out_job


@pytest.fixture(scope="session")
def train_image() -> str:
    build_images("--train-only")
    return "hyperplane-train:latest"


@pytest.fixture(scope="session")
def serve_image() -> str:
    build_images("--serve-only")
    return "hyperplane-serve:latest"


@pytest.fixture(scope="session")
def trained_model_dir(train_image: str, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A used-car model trained by the training image on 600 cars (the artifact folder, as SageMaker
    would unpack model.tar.gz)."""
    root = tmp_path_factory.mktemp("trained-job")
    job = Job(hyperparameters={"epochs": "60", "hidden_layers": "16", "ensemble_size": "2"},
              channels={"train": {"cars.csv": CARS_HEADER + "".join(CARS_LINES[:600])}})
    result = run_job(lay_out_job(root, job), image=train_image)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root / "model"
