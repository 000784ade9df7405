"""ServingSettings from environment mappings: defaults, the port rules, worker/thread planning, limits."""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import pytest

from container.serving.gunicorn_app import gunicorn_level
from container.serving.settings import ServingSettings, SettingsError, cgroup_cpu_quota, usable_cpus, visible_gpus


def settings(cpus: int = 4, gpus: int = 0, **environ: str) -> ServingSettings:
    return ServingSettings.from_environ(environ, cpus=cpus, gpus=gpus)


def from_env(environ: dict[str, str]) -> ServingSettings:
    return ServingSettings.from_environ(environ, cpus=4, gpus=0)


def test_defaults() -> None:
    s = settings(cpus=4)
    assert (s.port, s.workers, s.torch_threads, s.gpus, s.timeout_s, s.max_payload_mb) == (8080, 4, 1, 0, 60, 6)
    assert s.max_payload_bytes == 6 * 1024 * 1024 == 6_291_456
    assert s.graceful_timeout_s <= 25
    assert (s.log_level, s.log_ping, s.image_role) == (logging.INFO, False, "serve")
    assert s.model_dir == pathlib.Path("/opt/ml/model")
    assert s.readiness_dir.name.startswith("hyperplane-readiness-")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1   # type: ignore[misc]


def test_model_dir_follows_sagemaker_base_dir(tmp_path: pathlib.Path) -> None:
    assert settings(SAGEMAKER_BASE_DIR=str(tmp_path)).model_dir == tmp_path / "model"


@pytest.mark.parametrize(("environ", "port"), [
    ({"SAGEMAKER_BIND_TO_PORT": "9000"}, 9000),
    ({"SAGEMAKER_BIND_TO_PORT": "1500", "SAGEMAKER_SAFE_PORT_RANGE": "1111-2222"}, 1500),
    ({"SAGEMAKER_BIND_TO_PORT": "2222", "SAGEMAKER_SAFE_PORT_RANGE": "1111-2222"}, 2222),
    ({"SAGEMAKER_SAFE_PORT_RANGE": "1111-2222"}, 8080),   # the range bounds only a port we are told to use
])
def test_port(environ: dict[str, str], port: int) -> None:
    assert from_env(environ).port == port


@pytest.mark.parametrize(("environ", "words"), [
    ({"SAGEMAKER_BIND_TO_PORT": "3000", "SAGEMAKER_SAFE_PORT_RANGE": "1111-2222"}, "outside"),
    ({"SAGEMAKER_BIND_TO_PORT": "1500", "SAGEMAKER_SAFE_PORT_RANGE": "2222-1111"}, "not a range"),
    ({"SAGEMAKER_BIND_TO_PORT": "1500", "SAGEMAKER_SAFE_PORT_RANGE": "1111"}, "not a range"),
    ({"SAGEMAKER_BIND_TO_PORT": "1500", "SAGEMAKER_SAFE_PORT_RANGE": "a-b"}, "not a range"),
    ({"SAGEMAKER_BIND_TO_PORT": "http"}, "not an integer"),
    ({"SAGEMAKER_BIND_TO_PORT": "0"}, "at least 1"),
    ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "not a TCP port"),
])
def test_bad_port_settings_name_the_variable(environ: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words) as caught:
        from_env(environ)
    assert next(iter(environ)) in str(caught.value) or "SAFE_PORT_RANGE" in str(caught.value)


@pytest.mark.parametrize(("cpus", "gpus", "environ", "workers", "torch_threads"), [
    (1, 0, {}, 1, 1),
    (8, 0, {}, 8, 1),
    (8, 0, {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, 2, 4),    # fewer workers: more torch threads each
    (8, 0, {"SAGEMAKER_MODEL_SERVER_WORKERS": "3"}, 3, 2),
    (2, 0, {"SAGEMAKER_MODEL_SERVER_WORKERS": "4"}, 4, 1),    # oversubscribed on request, never below 1
    (2, 4, {}, 4, 1),                                         # at least one worker per GPU
    (16, 4, {}, 16, 1),
])
def test_worker_and_thread_plan(cpus: int, gpus: int, environ: dict[str, str], workers: int,
                                torch_threads: int) -> None:
    s = ServingSettings.from_environ(environ, cpus=cpus, gpus=gpus)
    assert (s.workers, s.torch_threads, s.gpus) == (workers, torch_threads, gpus)
    assert s.threads > 1   # a thread is always free for /ping


@pytest.mark.parametrize(("workers", "payload", "concurrency"), [
    ("4", "6", 4), ("32", "6", 16), ("32", "100", 1), ("3", "0", 3), ("2", "50", 2), ("1", "200", 1)])
def test_execution_parameters_respect_the_batch_budget(workers: str, payload: str, concurrency: int) -> None:
    s = settings(SAGEMAKER_MODEL_SERVER_WORKERS=workers, SAGEMAKER_MAX_PAYLOAD_IN_MB=payload)
    assert s.max_concurrent_transforms == concurrency
    assert s.max_payload_mb == int(payload)
    assert s.max_payload_bytes == (int(payload) * 1024 * 1024 or None)


@pytest.mark.parametrize(("name", "value"), [
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"), ("SAGEMAKER_MODEL_SERVER_WORKERS", "many"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "-5"), ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "6.5"), ("LOG_LEVEL", "LOUD"), ("HYPERPLANE_LOG_PING", "sometimes")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        from_env({name: value})


def test_timeout_log_level_and_flags() -> None:
    s = settings(SAGEMAKER_MODEL_SERVER_TIMEOUT="120", SAGEMAKER_CONTAINER_LOG_LEVEL="20", LOG_LEVEL="debug",
                 HYPERPLANE_LOG_PING="true", HYPERPLANE_IMAGE_ROLE="train")
    assert (s.timeout_s, s.log_level, s.log_ping, s.image_role) == (120, logging.DEBUG, True, "train")
    assert settings(SAGEMAKER_CONTAINER_LOG_LEVEL="30").log_level == logging.WARNING
    assert settings(SAGEMAKER_CONTAINER_LOG_LEVEL="error").log_level == logging.ERROR
    assert [gunicorn_level(level) for level in (5, 10, 15, 20, 30, 40, 50)] == [
        "debug", "debug", "info", "info", "warning", "error", "critical"]


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota(tmp_path: pathlib.Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_usable_cpus_is_capped_by_the_quota(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) >= 1


@pytest.mark.parametrize(("visible", "gpus"), [
    (None, 4), ("0,1", 2), ("", 0), ("-1", 0), ("0,-1,2", 1), ("0,1,2,3,4,5", 4), ("GPU-abc,GPU-def", 2)])
def test_visible_gpus(visible: str | None, gpus: int) -> None:
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpus(environ, device_count=lambda: 4) == gpus


def test_no_gpu_library_means_no_gpus() -> None:
    assert visible_gpus({}) >= 0   # NVML absent here: 0, and never an exception
