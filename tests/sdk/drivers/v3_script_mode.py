"""SDK v3 (sagemaker 3.x) local mode with the user's own code: ModelTrainer(source_code=SourceCode(...))
trains examples/script-mode/train.py in the training image, and the serving image serves the artifact with
examples/script-mode/inference.py (run by .venv-sdk3/bin/python).

    .venv-sdk3/bin/python tests/sdk/drivers/v3_script_mode.py SPEC.json

Steps (tests/sdk/test_sdk_v3_script_mode.py asserts what each must show):
    train   ModelTrainer(training_mode=Mode.LOCAL_CONTAINER, training_image=<training image>,
            source_code=SourceCode(source_dir, entry_script="train.py")): v3 does not run the image's
            `train`; it mounts its own driver (channel sm_drivers), sets the entrypoint to
            `/bin/bash -c ".../sm_train.sh"`, which needs bash, python3 and pip on PATH, and runs
            `python3 train.py --epochs ...` from the code channel. The artifact lands in
            <local_container_root>/compressed_artifacts/model.tar.gz
    serve   sagemaker.core.local.LocalSession, low-level create_model (Environment: SAGEMAKER_PROGRAM,
            SAGEMAKER_SUBMIT_DIRECTORY=file://<source_dir>, which local mode mounts at /opt/ml/code) /
            create_endpoint_config / create_endpoint / invoke_endpoint on the serving image (v3's
            ModelBuilder has no BYOC local path)
Everything is written under spec["work"]; the exited compose containers are the caller's to remove (F7).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from typing import Any

# _common first: it sets the region and SAGEMAKER_SUPPRESS_V2_WARNING before the SDK loads
from _common import ROLE, TELEMETRY_OPT_OUT, Steps, predict_on_local_endpoint, read_spec, typed

# isort: split

from sagemaker.core.local import LocalSession
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, SourceCode
from sagemaker.train.model_trainer import Mode

spec = read_spec()
WORK = spec["work"]
steps = Steps()


def members(archive: str) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def train() -> dict[str, Any]:
    # a root of its own with a unique name: v3's compose project (and container) names come from its
    # basename, so two runs with the same basename would collide
    root = os.path.join(WORK, spec["v3_root_name"])
    os.makedirs(root)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER, training_image=spec["train_image"], role=ROLE,
        compute=Compute(instance_type="local_cpu", instance_count=1),
        source_code=SourceCode(source_dir=spec["source_dir"], entry_script="train.py"),
        hyperparameters=spec["hyperparameters"], local_container_root=root,   # default: the cwd at import
        base_job_name="hyperplane-v3-script")
    trainer.train(input_data_config=[InputData(channel_name="train", data_source=spec["train_dir"])],
                  wait=True)
    compressed = os.path.join(root, "compressed_artifacts")
    artifact = os.path.join(compressed, "model.tar.gz")
    output = os.path.join(compressed, "output.tar.gz")
    exists = os.path.isfile(artifact)
    return {"root": root, "artifact": artifact, "exists": exists, "output_tar": output,
            "model_members": members(artifact) if exists else [],
            "output_members": members(output) if os.path.isfile(output) else [],
            "compressed_artifacts": sorted(os.listdir(compressed)) if os.path.isdir(compressed) else []}


def serve(artifact: str) -> dict[str, Any]:
    model_dir = os.path.join(WORK, "out", "v3-model")    # a folder of its own: it is extracted in place (F9)
    os.makedirs(model_dir)
    shutil.copy(artifact, model_dir)
    session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"local_code": True, "container_root": os.path.join(WORK, "container-root"),
                                "serving_port": spec["serving_port"]}}
    os.makedirs(session.config["local"]["container_root"], exist_ok=True)
    sm, runtime = session.sagemaker_client, session.sagemaker_runtime_client
    features, rows = spec["feature_names"], spec["rows"]
    return predict_on_local_endpoint(
        sm, runtime, "hyperplane-v3-script",
        {"Image": spec["serve_image"], "ModelDataUrl": "file://" + os.path.join(model_dir, "model.tar.gz"),
         "Environment": {"SAGEMAKER_PROGRAM": "inference.py",
                         "SAGEMAKER_SUBMIT_DIRECTORY": "file://" + spec["source_dir"]}},
        rows, [dict(zip(features, [typed(cell) for cell in row], strict=True)) for row in rows])


def main() -> None:
    trained = steps.run("train", train)
    if trained is not None and trained["exists"]:
        steps.run("serve", lambda: serve(trained["artifact"]))


if __name__ == "__main__":
    try:
        main()
    finally:
        steps.emit()
