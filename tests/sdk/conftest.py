"""Helpers for the SDK tests: run a driver under an SDK venv, and leave Docker and /tmp as they were.

The SDK venvs (.venv-sdk2: sagemaker<3, .venv-sdk3: sagemaker 3) cannot be imported here, so each test
module runs one driver script from tests/sdk/drivers/ with that venv's python; the driver prints its
results as JSON on its last stdout line. Everything a driver writes lives in one scratch folder under /tmp
(never under /root: local mode refuses to mount from there, F8), which is removed afterwards together with
the compose containers local mode leaves behind (F7) and the `sagemaker-local` network if it is new.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import runpy
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from model import artifact
from model.regressor import Regressor
from model.table import Table
from tests.container.docker import SERVE_IMAGE, TRAIN_IMAGE, build_images, docker
from tests.jobs import CARS_HEADER, CARS_LINES

ROOT = pathlib.Path(__file__).resolve().parents[2]
DRIVERS = pathlib.Path(__file__).resolve().parent / "drivers"
AWS_RUN = ROOT / "scripts" / "aws-run"
SDK_NETWORK = "sagemaker-local"
COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
DRIVER_TIMEOUT_S = 600   # a normal v2 run takes ~80 s; scripts/test gives each test 900 s

FEATURES = CARS_HEADER.strip().split(",")[1:]                     # training order, target (Price) left out
TRAIN_ROWS = CARS_LINES[:300]                                     # with the header: a few hundred cars
REQUEST_ROWS = [line.strip().split(",")[1:] for line in CARS_LINES[1000:1020]]
TRANSFORM_LINES = [line.split(",", 1)[1] for line in CARS_LINES[600:900]]   # 300 lines, no target
# The transform input repeats them: 2.2 MB, so that max_payload=1 (MB) makes local mode send 3 mini-batches.
TRANSFORM_REPEAT = 110
# Python values, not strings: the SDK's own str() quoting (v2) or JSON (v3) reaches the container,
# with an int, a float, a str, a bool and a list among them.
HYPERPARAMETERS: dict[str, Any] = {"epochs": 30, "hidden_layers": "16", "ensemble_size": 2,
                                   "learning_rate": 0.01, "deterministic": True,
                                   "categorical_columns": ["Met_Color", "Automatic"]}


def sdk_python(major: int) -> pathlib.Path:
    python = ROOT / f".venv-sdk{major}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python.relative_to(ROOT)} is missing; scripts/bootstrap creates it")
    return python


@pytest.fixture(scope="session")
def sdk_images() -> tuple[str, str]:
    """Both images, built from the working tree by scripts/build-images (cached: seconds)."""
    build_images()
    return TRAIN_IMAGE, SERVE_IMAGE


def scratch_folder(prefix: str) -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp(prefix=f"hyperplane-{prefix}-", dir="/tmp")).resolve()
    assert not root.is_relative_to(pathlib.Path.home().resolve()), root   # F8
    return root


def write_inputs(root: pathlib.Path) -> dict[str, str]:
    """The training channel (header + 300 cars) and the batch-transform input (300 lines, no target)."""
    train_dir = root / "data" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "cars.csv").write_text(CARS_HEADER + "".join(TRAIN_ROWS))
    transform_dir = root / "data" / "transform"
    transform_dir.mkdir(parents=True)
    (transform_dir / "cars.csv").write_text("".join(TRANSFORM_LINES) * TRANSFORM_REPEAT)
    return {"train_dir": str(train_dir), "transform_input": str(transform_dir / "cars.csv")}


def run_driver(major: int, script: str, spec: dict[str, Any], root: pathlib.Path) -> dict[str, Any]:
    """Runs tests/sdk/drivers/<script> with .venv-sdk<major>'s python (cwd: the scratch folder, so
    anything the SDK drops in its working directory is removed with it); returns its steps."""
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    # no AWS credentials (local mode would write them into its compose files, F17), a region (F1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(AWS_DEFAULT_REGION="us-east-1", SAGEMAKER_SUPPRESS_V2_WARNING="1")
    try:
        result = subprocess.run([str(sdk_python(major)), str(DRIVERS / script), str(spec_file)], cwd=root,
                                env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout
        pytest.fail(f"{script} ran for more than {DRIVER_TIMEOUT_S} s; its output ended:\n{(output or '')[-4000:]}")
    (root / "driver.log").write_text(result.stdout + result.stderr)
    lines = result.stdout.strip().splitlines()
    try:
        steps: dict[str, Any] = json.loads(lines[-1])["steps"]
    except (IndexError, json.JSONDecodeError, KeyError):
        pytest.fail(f"{script} printed no result (exit {result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return steps


def step(steps: dict[str, Any], name: str) -> Any:
    """The value a driver step returned; fails with the step's traceback and log if it failed."""
    assert name in steps, f"step {name} did not run (an earlier step failed): {sorted(steps)}"
    record = steps[name]
    assert record["ok"], f"step {name} failed:\n{record['error']}\n--- its log ---\n{record['log'][-4000:]}"
    return record["value"]


def metric_definitions() -> list[dict[str, str]]:
    """METRIC_DEFINITIONS from scripts/aws-run (it imports the SDK only inside main; run_path writes no
    bytecode next to the script)."""
    definitions: list[dict[str, str]] = runpy.run_path(str(AWS_RUN))["METRIC_DEFINITIONS"]
    return definitions


# ---- in-process predictions ------------------------------------------------------------------------

def load_model_tar(model_tar: pathlib.Path, dest: pathlib.Path) -> Regressor:
    """model.tar.gz extracted into a folder of its own and loaded as the server loads it."""
    dest.mkdir(parents=True)
    with tarfile.open(model_tar) as tar:
        tar.extractall(dest, filter="data")
    return artifact.load(dest)


def predict_rows(model: Regressor, rows: list[list[str]], names: list[str] = FEATURES) -> np.ndarray:
    """In-process predictions for rows of CSV cells given in `names` order (only the model's features
    are passed on)."""
    table = Table.from_rows(names, rows)
    return model.predict(Table({name: table.columns[name] for name in model.feature_names}))


def transform_rows() -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(TRANSFORM_LINES))))


def assert_close(actual: Any, expected: np.ndarray) -> None:
    got = np.asarray(actual, dtype=np.float64)
    assert got.shape == expected.shape, f"{got.shape} predictions, expected {expected.shape}"
    assert np.allclose(got, expected, rtol=1e-5, atol=0), np.abs(got / expected - 1).max()


# ---- Docker and /tmp hygiene -----------------------------------------------------------------------

def _inspect(ids: list[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    result = docker("inspect", *ids, check=False)   # a container may vanish meanwhile (others' --rm)
    found: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return found


def _containers() -> set[str]:
    return set(docker("ps", "-aq", "--no-trunc").stdout.split())


def _networks() -> set[str]:
    return set(docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def _compose_dirs_in_tmp() -> set[str]:
    """SDK job folders in /tmp (v2's default container_root): there must be none of ours."""
    return {str(p.parent) for p in pathlib.Path("/tmp").glob("tmp*/docker-compose.yaml")}


@dataclass
class Hygiene:
    """Snapshot before a driver runs; `clean()` removes what local mode left and reports what remains.

    Ours = containers whose compose working directory lies under the scratch root (local mode writes its
    docker-compose.yaml there); they are removed by ID. Other people may run containers meanwhile, so
    "left behind" means: a container that is new since the snapshot and was created by docker-compose
    (only SDK local mode uses compose here), or ours; networks must be exactly as before."""

    root: pathlib.Path
    containers_before: set[str] = field(default_factory=_containers)
    networks_before: set[str] = field(default_factory=_networks)
    tmp_jobs_before: set[str] = field(default_factory=_compose_dirs_in_tmp)
    removed: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def ours(self) -> list[dict[str, Any]]:
        return [c for c in _inspect(sorted(_containers()))
                if pathlib.Path((c["Config"].get("Labels") or {}).get(COMPOSE_DIR_LABEL) or "/")
                .is_relative_to(self.root)]

    def clean(self) -> dict[str, Any]:
        for container in self.ours():
            docker("rm", "-f", container["Id"], check=False)
            self.removed.append(container["Name"].lstrip("/"))
        if SDK_NETWORK not in self.networks_before and SDK_NETWORK in _networks():
            attached = _inspect_network(SDK_NETWORK)
            if not attached:
                docker("network", "rm", SDK_NETWORK, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        new = _inspect(sorted(_containers() - self.containers_before))
        self.report = {
            "removed": self.removed,
            "left_containers": [c["Name"].lstrip("/") for c in new
                                if COMPOSE_PROJECT_LABEL in (c["Config"].get("Labels") or {})],
            "ours_left": [c["Name"].lstrip("/") for c in self.ours()],
            "new_networks": sorted(_networks() - self.networks_before),
            "gone_networks": sorted(self.networks_before - _networks()),
            "root_exists": self.root.exists(),
            "new_tmp_jobs": sorted(_compose_dirs_in_tmp() - self.tmp_jobs_before),
        }
        return self.report

    def assert_clean(self) -> None:
        report = self.report
        assert report["removed"], "local mode left no compose containers: did the driver run at all?"
        assert report["left_containers"] == [], report
        assert report["ours_left"] == [], report
        assert report["new_networks"] == [] and report["gone_networks"] == [], report
        assert not report["root_exists"], report
        assert report["new_tmp_jobs"] == [], report


def _inspect_network(name: str) -> dict[str, Any]:
    result = docker("network", "inspect", "-f", "{{json .Containers}}", name, check=False)
    attached: dict[str, Any] = json.loads(result.stdout or "{}") or {}
    return attached
