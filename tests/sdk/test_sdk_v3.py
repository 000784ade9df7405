"""SageMaker Python SDK v3 local mode: ModelTrainer trains with the training image's default command, and
the serving image serves the artifact through sagemaker.core.local's low-level endpoint calls."""

from __future__ import annotations

import pathlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from model.regressor import Regressor
from tests.sdk.conftest import (
    FEATURES,
    HYPERPARAMETERS,
    REQUEST_ROWS,
    Hygiene,
    assert_close,
    load_model_tar,
    predict_rows,
    run_driver,
    scratch_folder,
    step,
    write_inputs,
)
from tests.serving.process import free_port

pytestmark = [pytest.mark.sdk, pytest.mark.docker]


@dataclass
class V3Run:
    steps: dict[str, Any]
    model: Regressor | None
    two_hosts: Regressor | None
    hygiene: Hygiene


@pytest.fixture(scope="module")
def v3(sdk_images: tuple[str, str]) -> V3Run:
    train_image, serve_image = sdk_images
    root = scratch_folder("sdk3")
    hygiene = Hygiene(root)
    try:
        spec = {"work": str(root), **write_inputs(root), "serving_port": free_port(),
                "train_image": train_image, "serve_image": serve_image, "hyperparameters": HYPERPARAMETERS,
                "rows": REQUEST_ROWS, "v3_root_name": f"hpv3{uuid.uuid4().hex[:8]}"}
        steps = run_driver(3, "v3_flow.py", spec, root)
        models: dict[str, Regressor | None] = {"train": None, "train_two_hosts": None}
        for name in models:
            if steps.get(name, {}).get("ok") and steps[name]["value"]["exists"]:
                models[name] = load_model_tar(pathlib.Path(steps[name]["value"]["artifact"]), root / name)
    finally:
        hygiene.clean()
    return V3Run(steps, models["train"], models["train_two_hosts"], hygiene)


def test_model_trainer_trains_with_the_default_command(v3: V3Run) -> None:
    """ModelTrainer(training_mode=Mode.LOCAL_CONTAINER) passes no command: CMD ["train"] trains, and the
    JSON-quoted hyperparameters (v3 writes "true", "[...]") arrive intact."""
    trained = step(v3.steps, "train")
    assert trained["exists"], trained
    assert trained["artifact"].endswith("/compressed_artifacts/model.tar.gz")
    assert v3.model is not None
    config = v3.model.config
    assert (config.epochs, config.hidden_layers, config.ensemble_size, config.deterministic,
            config.categorical_columns) == (30, (16,), 2, True, ("Met_Color", "Automatic"))
    assert v3.model.feature_names == FEATURES
    assert "epoch=1 train_loss=" in v3.steps["train"]["log"]


def test_serving_image_serves_the_v3_artifact(v3: V3Run) -> None:
    served = step(v3.steps, "serve")
    assert v3.model is not None
    expected = predict_rows(v3.model, REQUEST_ROWS)
    assert served["csv_status"] == 200 and served["json_status"] == 200
    assert_close(served["csv"], expected)
    assert_close(served["json"], expected)


def test_two_instances_train_one_model_over_a_detected_interface(v3: V3Run) -> None:
    """instance_count=2: v3 names the network interface `ethwe`, which its containers lack; both processes
    join over the one they do have, and one model comes out, trained on all 300 rows."""
    trained = step(v3.steps, "train_two_hosts")
    joined = trained["joined"]
    assert sorted(rank for line in joined for rank in re.findall(r" rank=(\d) ", line)) == ["0", "1"], joined
    assert all("world_size=2" in line and "interface=ethwe" not in line and "interface=default" not in line
               for line in joined), joined
    assert v3.two_hosts is not None and v3.two_hosts.info["training_rows"] == 300


def test_leaves_no_containers_networks_or_folders(v3: V3Run) -> None:
    v3.hygiene.assert_clean()
    assert len(v3.hygiene.removed) >= 2    # the training and the serving container
