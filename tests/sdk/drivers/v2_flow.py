"""SDK v2 (sagemaker<3) local mode, end to end, in one process (run by .venv-sdk2/bin/python).

    .venv-sdk2/bin/python tests/sdk/drivers/v2_flow.py SPEC.json

Steps (tests/sdk/test_sdk_v2.py asserts what each must show):
    fit, fit_numeric       Estimator(...).fit({"train": "file://..."})
    deploy_train_image     (a) estimator.deploy(): the training image serves; CSV and JSON predictions
    http_errors            (f) raw invoke_endpoint on that endpoint: 415/400/406 come back as statuses (F13)
    deploy_serve_image     (b) estimator.deploy(image_uri=<serving image>)
    model_deploy           (c) sagemaker.model.Model(model_data=...).deploy() on the serving image
    model_deploy_numeric   (c) the same for the all-numeric model: NumpySerializer / NumpyDeserializer
    transform_estimator    (d) estimator.transformer(...).transform(...)
    transform_model        (d) Transformer on a serving-image model made with session.create_model
    fit_failing            (e) an unknown hyperparameter: fit raises, the failure text is in the log
    fit_two_hosts          instance_count=2: two containers train one model on torch.distributed
    deploy_two_hosts       that model on the serving image
Every endpoint and model is deleted (model first, F6); the exited compose containers are the caller's to
remove (F7). Everything is written under spec["work"].
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Any

# _common first: it sets the region and SAGEMAKER_SUPPRESS_V2_WARNING before the SDK loads
from _common import ROLE, TELEMETRY_OPT_OUT, Steps, Tee, csv_numbers, on_endpoint, read_spec, typed

# isort: split

import numpy as np
from sagemaker.deserializers import CSVDeserializer, JSONDeserializer, NumpyDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import CSVSerializer, JSONSerializer, NumpySerializer
from sagemaker.transformer import Transformer

spec = read_spec()
WORK = spec["work"]
steps = Steps()

session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
session.config = {"local": {"container_root": os.path.join(WORK, "container-root"),      # F7, F8
                            "serving_port": spec["serving_port"]}}
os.makedirs(session.config["local"]["container_root"], exist_ok=True)

FEATURES: list[str] = spec["feature_names"]
ROWS: list[list[str]] = spec["rows"]                       # cells as CSV text, in training order
TYPED = [[typed(cell) for cell in row] for row in ROWS]   # the same rows as JSON numbers and strings
NUMERIC: list[str] = spec["numeric_feature_names"]
NUMERIC_ROWS = np.array([[float(row[FEATURES.index(name)]) for name in NUMERIC] for row in ROWS])


def out_dir(name: str) -> str:
    """One folder per job or model (F9: local mode writes model.tar.gz straight into output_path and
    extracts it in place when deploying)."""
    path = os.path.join(WORK, "out", name)
    os.makedirs(path, exist_ok=True)
    return path


def own_copy(model_data: str, name: str) -> str:
    """model.tar.gz copied into a folder of its own, as a file:// URI (F9)."""
    shutil.copy(model_data.removeprefix("file://"), out_dir(name))
    return "file://" + os.path.join(out_dir(name), "model.tar.gz")


def estimator(name: str, hyperparameters: dict[str, Any], instance_count: int = 1) -> Estimator:
    return Estimator(image_uri=spec["train_image"], role=ROLE, instance_count=instance_count, instance_type="local",
                     hyperparameters=hyperparameters, output_path="file://" + out_dir(name),
                     base_job_name=f"hyperplane-{name}", sagemaker_session=session)


def fit(name: str, hyperparameters: dict[str, Any]) -> Estimator:
    est = estimator(name, hyperparameters)
    est.fit({"train": "file://" + spec["train_dir"]})   # keep logs=True: logs=False adds a 5 s poll
    return est


def describe_fit(est: Estimator) -> dict[str, Any]:
    return {"model_data": est.model_data, "job_name": est.latest_training_job.name,
            "hyperparameters": est.hyperparameters()}


def predict_all(predictor: Predictor, numeric: bool = False) -> dict[str, Any]:
    """The same rows through every serializer/deserializer pair the model accepts."""
    results: dict[str, Any] = {"endpoint_name": predictor.endpoint_name}
    if numeric:
        predictor.serializer = NumpySerializer()                    # application/x-npy in
        predictor.deserializer = NumpyDeserializer(accept="text/csv")  # the server writes no .npy
        array = predictor.predict(NUMERIC_ROWS)
        results["numpy"] = {"type": type(array).__name__, "shape": list(array.shape),
                            "values": array.astype(float).tolist()}
        rows: list[list[Any]] = NUMERIC_ROWS.tolist()
        records = [dict(zip(NUMERIC, row, strict=True)) for row in rows]
        instances: list[list[Any]] = rows
    else:
        rows, instances = ROWS, TYPED
        records = [dict(zip(FEATURES, row, strict=True)) for row in TYPED]
    predictor.serializer, predictor.deserializer = CSVSerializer(), CSVDeserializer()
    table = predictor.predict(rows)                                 # [["13321.5"], ...]
    results["csv"] = [float(cells[0]) for cells in table]
    results["csv_widths"] = sorted({len(cells) for cells in table})
    predictor.serializer, predictor.deserializer = JSONSerializer(), JSONDeserializer()
    results["json_instances"] = predictor.predict({"instances": instances})["predictions"]
    results["json_records"] = predictor.predict({"instances": records})["predictions"]
    return results


def http_errors(predictor: Predictor) -> dict[str, Any]:
    """Local mode hands back whatever status the container answered, without raising (F13)."""
    runtime = session.sagemaker_runtime_client
    good_row = ",".join(ROWS[0]) + "\n"
    short_row = ",".join(ROWS[0][:-1]) + "\n"                       # one column missing

    def invoke(body: bytes, content_type: str, accept: str) -> dict[str, Any]:
        response = runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, Body=body,
                                           ContentType=content_type, Accept=accept)
        return {"status": response["Body"].status, "body": response["Body"].read().decode()}

    return {
        "xml": invoke(b"<cars/>", "application/xml", "application/json"),
        "short_row": invoke(short_row.encode(), "text/csv", "application/json"),
        "npy_on_mixed_model": invoke(NumpySerializer().serialize(NUMERIC_ROWS), "application/x-npy",
                                     "application/json"),
        "accept_xml": invoke(good_row.encode(), "text/csv", "application/xml"),
        "good": invoke(good_row.encode(), "text/csv", "text/csv"),
    }


def model_predictor(model_data: str, name: str) -> Predictor:
    model = Model(image_uri=spec["serve_image"], model_data=model_data, role=ROLE, name=name,
                  predictor_cls=Predictor, sagemaker_session=session)
    return model.deploy(initial_instance_count=1, instance_type="local", wait=False)   # F5


def transform(transformer: Transformer) -> dict[str, Any]:
    # wait=False, logs=False: local mode transforms synchronously, the defaults call CloudWatch (F18)
    transformer.transform("file://" + spec["transform_input"], content_type="text/csv", split_type="Line",
                          wait=False, logs=False)
    folder = transformer.output_path.removeprefix("file://")
    out = os.path.join(folder, os.path.basename(spec["transform_input"]) + ".out")
    with open(out, "rb") as f:
        return {"out_file": out, "predictions": csv_numbers(f.read()), "files": sorted(os.listdir(folder))}


def transform_on_serving_model(est: Estimator) -> dict[str, Any]:
    name = "hyperplane-transform-serve"
    session.create_model(name, ROLE, {"Image": spec["serve_image"],
                                      "ModelDataUrl": own_copy(est.model_data, "model-transform"),
                                      "Environment": {}})                                # F19
    try:
        return transform(Transformer(model_name=name, instance_count=1, instance_type="local",
                                     strategy="MultiRecord", assemble_with="Line", accept="text/csv", max_payload=1,
                                     output_path="file://" + out_dir("transform-model"),
                                     sagemaker_session=session))
    finally:
        session.delete_model(name)


def fit_failing() -> dict[str, Any]:
    bad = estimator("failing", spec["bad_hyperparameters"])
    try:
        bad.fit({"train": "file://" + spec["train_dir"]})
    except Exception as error:  # the test expects this
        folder = out_dir("failing")
        return {"raised": type(error).__name__, "message": str(error), "output_dir": folder,
                "files": sorted(os.listdir(folder))}
    return {"raised": None}


def fit_two_hosts() -> tuple[Estimator, list[str]]:
    """The mixed job again on two hosts; the lines in which each process says who it is."""
    est = estimator("two-hosts", spec["hyperparameters"], instance_count=2)
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        est.fit({"train": "file://" + spec["train_dir"]})
    return est, [line for line in tee.buffer_.getvalue().splitlines() if "world_size=" in line]


def main() -> None:
    est = steps.run("fit", lambda: fit("mixed", spec["hyperparameters"]), describe_fit)
    numeric = steps.run("fit_numeric", lambda: fit("numeric", spec["numeric_hyperparameters"]), describe_fit)
    if est is not None:
        def a(predictor: Predictor) -> dict[str, Any]:
            results = predict_all(predictor)
            steps.run("http_errors", lambda: http_errors(predictor))
            return results

        steps.run("deploy_train_image", lambda: on_endpoint(
            lambda: est.deploy(initial_instance_count=1, instance_type="local", wait=False), a))
        steps.run("deploy_serve_image", lambda: on_endpoint(
            lambda: est.deploy(initial_instance_count=1, instance_type="local", wait=False,
                               image_uri=spec["serve_image"]), predict_all))
        steps.run("model_deploy", lambda: on_endpoint(
            lambda: model_predictor(own_copy(est.model_data, "model-mixed"), "hyperplane-model-mixed"),
            predict_all))
        # max_payload=1: several mini-batches, whose responses local mode joins with a newline each
        steps.run("transform_estimator", lambda: transform(est.transformer(
            instance_count=1, instance_type="local", strategy="MultiRecord", assemble_with="Line", max_payload=1,
            output_path="file://" + out_dir("transform-estimator"), accept="text/csv")))
        steps.run("transform_model", lambda: transform_on_serving_model(est))
    if numeric is not None:
        steps.run("model_deploy_numeric", lambda: on_endpoint(
            lambda: model_predictor(own_copy(numeric.model_data, "model-numeric"), "hyperplane-model-numeric"),
            lambda predictor: predict_all(predictor, numeric=True)))
    steps.run("fit_failing", fit_failing)
    two = steps.run("fit_two_hosts", fit_two_hosts, lambda value: {**describe_fit(value[0]), "joined": value[1]})
    if two is not None:
        steps.run("deploy_two_hosts", lambda: on_endpoint(
            lambda: model_predictor(own_copy(two[0].model_data, "model-two-hosts"), "hyperplane-model-two-hosts"),
            predict_all))


if __name__ == "__main__":
    try:
        main()
    finally:
        steps.emit()
