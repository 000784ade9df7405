"""SageMaker Python SDK v3 local mode with the user's own code: ModelTrainer(source_code=SourceCode(...))
trains examples/script-mode/train.py in hyperplane-train through v3's own driver (sm_train.sh under
`/bin/bash -c`, not the image's `train`), and hyperplane-serve serves the artifact with inference.py."""

from __future__ import annotations

import pathlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.sdk.conftest import Hygiene, assert_close, run_driver, scratch_folder, step, write_inputs
from tests.sdk.script_mode import (
    NUMERIC_FEATURES,
    NUMERIC_ROWS,
    SCRIPT_HYPERPARAMETERS,
    copy_source,
    extract,
    in_process,
    metrics_json,
)
from tests.serving.process import free_port

pytestmark = [pytest.mark.sdk, pytest.mark.docker]
EPOCHS = SCRIPT_HYPERPARAMETERS["epochs"]


@dataclass
class V3ScriptRun:
    steps: dict[str, Any]
    expected: dict[str, Any]        # in_process(): the example's own predictions and what model.pt holds
    metrics: dict[str, Any]         # compressed_artifacts/output.tar.gz: data/metrics.json
    hygiene: Hygiene


@pytest.fixture(scope="module")
def v3(sdk_images: tuple[str, str]) -> V3ScriptRun:
    train_image, serve_image = sdk_images
    root = scratch_folder("sdk3-script")
    hygiene = Hygiene(root)
    try:
        spec = {"work": str(root), **write_inputs(root), "source_dir": str(copy_source(root)),
                "serving_port": free_port(), "train_image": train_image, "serve_image": serve_image,
                "hyperparameters": SCRIPT_HYPERPARAMETERS, "feature_names": NUMERIC_FEATURES,
                "rows": NUMERIC_ROWS, "v3_root_name": f"hpv3s{uuid.uuid4().hex[:8]}"}
        steps = run_driver(3, "v3_script_mode.py", spec, root)
        expected: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        if steps.get("train", {}).get("ok"):
            trained = steps["train"]["value"]
            if "model.pt" in trained["model_members"]:
                expected = in_process(extract(pathlib.Path(trained["artifact"]), root / "in-process"))
            metrics = metrics_json(pathlib.Path(trained["output_tar"]))
    finally:
        hygiene.clean()
    return V3ScriptRun(steps, expected, metrics, hygiene)


def test_model_trainer_runs_train_py_through_its_own_driver(v3: V3ScriptRun) -> None:
    """v3 overrides the entrypoint with `/bin/bash -c .../sm_train.sh`: the script finds python3 (the image's
    venv, with torch) on PATH, runs the basic script driver, and the image's `train` never starts."""
    trained = step(v3.steps, "train")
    log = v3.steps["train"]["log"]
    assert "Starting training script" in log and "Running Basic Script driver" in log
    assert "/opt/venv/bin/python3 --version" in log            # check_python: the venv's python3 and pip
    assert "hyperplane.train" not in log, "the image's own `train` ran instead of v3's sm_train.sh"
    assert "Training Container Execution Completed" in log
    assert trained["artifact"].endswith("/compressed_artifacts/model.tar.gz")
    assert trained["model_members"] == ["model.pt"], trained["model_members"]


def test_hyperparameters_reach_the_script_as_arguments(v3: V3ScriptRun) -> None:
    """v3's driver turns the (JSON) hyperparameters into --name value arguments of `python3 train.py`."""
    step(v3.steps, "train")
    commands = re.findall(r"Executing command: (\S*python3?) train\.py ((?:--\S+ \S+ ?)+)", v3.steps["train"]["log"])
    assert len(commands) == 1, commands
    interpreter, args = commands[0]
    assert interpreter == "/opt/venv/bin/python3"
    words = args.split()
    passed = dict(zip(words[::2], words[1::2], strict=True))
    assert passed == {f"--{name}": str(value) for name, value in SCRIPT_HYPERPARAMETERS.items()}


def test_the_artifact_and_metrics_are_the_scripts(v3: V3ScriptRun) -> None:
    """model.pt (torch, read back with weights_only=True) and output.tar.gz's metrics.json are what
    train.py wrote for these hyperparameters and this data."""
    trained = step(v3.steps, "train")
    log = v3.steps["train"]["log"]
    assert "data/metrics.json" in trained["output_members"], trained["output_members"]
    assert v3.expected, "model.pt could not be read back"
    assert v3.expected["features"] == NUMERIC_FEATURES
    assert (v3.expected["target"], v3.expected["hidden"]) == ("Price", SCRIPT_HYPERPARAMETERS["hidden"])
    assert f"epoch={EPOCHS} train_loss=" in log and f"epoch={EPOCHS + 50} " not in log
    logged = re.findall(r"train_rmse=([0-9.eE+-]+); model written to /opt/ml/model/model.pt", log)
    assert len(logged) == 1, logged
    assert v3.metrics["epochs"] == EPOCHS
    assert v3.metrics["train_rmse"] == pytest.approx(float(logged[0]), rel=1e-5)


def test_serving_image_serves_the_v3_artifact_with_inference_py(v3: V3ScriptRun) -> None:
    """create_model(Environment: SAGEMAKER_PROGRAM=inference.py, SAGEMAKER_SUBMIT_DIRECTORY=file://source):
    CSV and JSON records answer what inference.py computes in-process from the same model.pt."""
    served = step(v3.steps, "serve")
    assert served["csv_status"] == 200 and served["json_status"] == 200
    assert_close(served["csv"], np.asarray(v3.expected["csv"]))
    assert_close(served["json"], np.asarray(v3.expected["json"]))


def test_leaves_no_containers_networks_or_folders(v3: V3ScriptRun) -> None:
    v3.hygiene.assert_clean()
    assert len(v3.hygiene.removed) >= 2    # the training and the serving container
