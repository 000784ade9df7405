"""SDK v3 (sagemaker 3.x) local mode: ModelTrainer trains, the serving image serves the artifact
(run by .venv-sdk3/bin/python).

    .venv-sdk3/bin/python tests/sdk/drivers/v3_flow.py SPEC.json

Steps (tests/sdk/test_sdk_v3.py asserts what each must show):
    train   ModelTrainer(training_mode=Mode.LOCAL_CONTAINER, training_image=<training image>), no command:
            the image's CMD ["train"] must train (F15); the artifact lands in
            <local_container_root>/compressed_artifacts/model.tar.gz
    train_two_hosts   the same with instance_count=2: two containers, one torch.distributed world (v3 names
            the network interface `ethwe`, which its containers lack: the lines in which each process says
            who it is show the one it chose)
    serve   sagemaker.core.local.LocalSession, low-level create_model / create_endpoint_config /
            create_endpoint / invoke_endpoint on the serving image (v3's ModelBuilder has no BYOC local path)
Everything is written under spec["work"]; the exited compose containers are the caller's to remove (F7).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Any

# _common first: it sets the region and SAGEMAKER_SUPPRESS_V2_WARNING before the SDK loads
from _common import ROLE, TELEMETRY_OPT_OUT, Steps, Tee, predict_on_local_endpoint, read_spec, typed

# isort: split

from sagemaker.core.local import LocalSession
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData
from sagemaker.train.model_trainer import Mode

spec = read_spec()
WORK = spec["work"]
steps = Steps()


def train(hosts: int = 1) -> dict[str, Any]:
    # a root of its own with a unique name: v3's compose project (and container) names come from its
    # basename, so two runs with the same basename would collide
    root = os.path.join(WORK, spec["v3_root_name"] + ("" if hosts == 1 else f"-{hosts}-hosts"))
    os.makedirs(root)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER, training_image=spec["train_image"], role=ROLE,
        compute=Compute(instance_type="local_cpu", instance_count=hosts),
        hyperparameters=spec["hyperparameters"], local_container_root=root,   # default: the cwd at import
        base_job_name="hyperplane-v3")
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        trainer.train(input_data_config=[InputData(channel_name="train", data_source=spec["train_dir"])],
                      wait=True)
    artifact = os.path.join(root, "compressed_artifacts", "model.tar.gz")
    return {"root": root, "artifact": artifact, "exists": os.path.isfile(artifact),
            "root_entries": sorted(os.listdir(root)),
            "joined": [line for line in tee.buffer_.getvalue().splitlines() if "world_size=" in line]}


def serve(artifact: str) -> dict[str, Any]:
    model_dir = os.path.join(WORK, "out", "v3-model")    # a folder of its own: it is extracted in place (F9)
    os.makedirs(model_dir)
    shutil.copy(artifact, model_dir)
    session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"container_root": os.path.join(WORK, "container-root"),
                                "serving_port": spec["serving_port"]}}
    os.makedirs(session.config["local"]["container_root"], exist_ok=True)
    sm, runtime = session.sagemaker_client, session.sagemaker_runtime_client
    rows = spec["rows"]
    return predict_on_local_endpoint(
        sm, runtime, "hyperplane-v3",
        {"Image": spec["serve_image"], "ModelDataUrl": "file://" + os.path.join(model_dir, "model.tar.gz"),
         "Environment": {}},
        rows, [[typed(cell) for cell in row] for row in rows])


def main() -> None:
    trained = steps.run("train", train)
    if trained is not None and trained["exists"]:
        steps.run("serve", lambda: serve(trained["artifact"]))
    steps.run("train_two_hosts", lambda: train(hosts=2))


if __name__ == "__main__":
    try:
        main()
    finally:
        steps.emit()
