"""Where SageMaker puts things: one SageMakerPaths value, built once at an entry point and passed down.

The root is /opt/ml, or SAGEMAKER_BASE_DIR when set (the variable the sagemaker-training toolkit honours),
so the same code runs inside the image and against a folder on a laptop.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_ROOT = pathlib.Path("/opt/ml")


@dataclass(frozen=True)
class SageMakerPaths:
    root: pathlib.Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SageMakerPaths:
        return cls(pathlib.Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_ROOT))

    @property
    def config_dir(self) -> pathlib.Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters(self) -> pathlib.Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config(self) -> pathlib.Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config(self) -> pathlib.Path:
        return self.config_dir / "resourceconfig.json"

    def channel(self, name: str) -> pathlib.Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> pathlib.Path:
        return self.root / "model"

    @property
    def output_dir(self) -> pathlib.Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> pathlib.Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> pathlib.Path:
        return self.output_dir / "failure"

    @property
    def checkpoints_dir(self) -> pathlib.Path:
        """The folder SageMaker syncs with the job's checkpoint_s3_uri (downloaded before `train` starts,
        uploaded as files change); /opt/ml/checkpoints, SageMaker's default checkpoint_local_path."""
        return self.root / "checkpoints"
