"""scripts/aws-run against the real SDK v2 classes with their AWS side mocked (run by .venv-sdk2/bin/python).

    .venv-sdk2/bin/python tests/sdk/drivers/aws_run_dry.py SPEC.json

Session, Estimator, Model, Predictor and Transformer are replaced by mock.create_autospec of the real
classes, so every constructor and method call aws-run makes is checked against sagemaker 2.x's actual
signatures (a wrong keyword raises TypeError). Steps:
    happy         a whole run: the calls it made, in order
    failing       predict raises: the endpoint, its config and the model are still deleted
"""

from __future__ import annotations

import runpy
from typing import Any
from unittest import mock

# _common first: it sets the region and SAGEMAKER_SUPPRESS_V2_WARNING before the SDK loads
from _common import Steps, read_spec

# isort: split

import sagemaker.estimator
import sagemaker.model
import sagemaker.session
from sagemaker.predictor import Predictor
from sagemaker.transformer import Transformer

spec = read_spec()
steps = Steps()
aws_run = runpy.run_path(spec["aws_run"])   # the script's globals; its main() does not run


def dry_run(fail_predict: bool) -> dict[str, Any]:
    args = aws_run["parse_args"](["--role", "arn:aws:iam::111111111111:role/R", "--s3-prefix", "s3://bucket/pre/",
                               "--train-image", "1.dkr.ecr.us-east-1.amazonaws.com/hyperplane-train:latest",
                               "--serve-image", "1.dkr.ecr.us-east-1.amazonaws.com/hyperplane-serve:latest",
                               "--region", "us-east-1"])
    session_cls = mock.create_autospec(sagemaker.session.Session)
    estimator_cls = mock.create_autospec(sagemaker.estimator.Estimator)
    model_cls = mock.create_autospec(sagemaker.model.Model)
    session = session_cls.return_value
    session.upload_data.return_value = "s3://bucket/pre/data/train/toyota_corolla.csv"
    session.read_s3_file.return_value = "1.0\n2.0\n"
    estimator_cls.return_value.model_data = "s3://bucket/pre/output/job/output/model.tar.gz"
    predictor = mock.create_autospec(Predictor, instance=True)
    predictor.predict.side_effect = RuntimeError("boom") if fail_predict else [[["1.0"], ["2.0"], ["3.0"]],
                                                                                {"predictions": [4.0]}]
    model_cls.return_value.deploy.return_value = predictor
    transformer = mock.create_autospec(Transformer, instance=True)
    model_cls.return_value.transformer.return_value = transformer
    with mock.patch("sagemaker.session.Session", session_cls), \
            mock.patch("sagemaker.estimator.Estimator", estimator_cls), \
            mock.patch("sagemaker.model.Model", model_cls):
        try:
            aws_run["run"](args)
            raised = None
        except RuntimeError as error:
            raised = str(error)
    estimator_kwargs = estimator_cls.call_args.kwargs
    return {
        "raised": raised,
        "estimator": {k: v for k, v in estimator_kwargs.items() if k != "sagemaker_session"},
        "fit": [str(c) for c in estimator_cls.return_value.fit.call_args_list],
        "model": {k: v for k, v in model_cls.call_args.kwargs.items()
                  if k not in ("sagemaker_session", "predictor_cls")},
        "deploy": model_cls.return_value.deploy.call_args.kwargs.get("instance_type"),
        "transform": [str(c) for c in transformer.transform.call_args_list],
        "delete_endpoint": [str(c) for c in session.delete_endpoint.call_args_list],
        "delete_endpoint_config": [str(c) for c in session.delete_endpoint_config.call_args_list],
        "delete_model": model_cls.return_value.delete_model.call_count,
        "uploads": [str(c) for c in session.upload_data.call_args_list],
    }


steps.run("happy", lambda: dry_run(fail_predict=False))
steps.run("failing", lambda: dry_run(fail_predict=True))
steps.emit()
