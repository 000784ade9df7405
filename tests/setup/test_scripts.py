"""The shell side of the set-up on a faked machine: setup_plan.py's command line with fake Pythons on PATH,
scripts/lib/common.sh's torch download from a local file index (the stand-in for the PyTorch CPU index), its
base-image choice and errors with a fake `docker`, and scripts/test + scripts/bootstrap in a scratch copy of
the repository with a fake `docker` and fake lint/test tools: `-m "not docker and not sdk"` never runs docker.
No Docker engine, no network."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.setup.conftest import PLANNER, executable, fake_wheel, file_index, setup_plan

ARCH = setup_plan.normalize_arch(platform.machine())
CPU_311 = f"torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_{ARCH}.whl"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def fake_python(folder: Path, name: str, version: str, **facts: object) -> Path:
    """A `python3.X` that answers setup_plan.py's probe as the Python described would."""
    values = {"executable": str(folder / name), "version": [int(v) for v in version.split(".")], "venv": True,
              "headers": True, "machine": platform.machine(), "free_threaded": False, **facts}
    return executable(folder / name, f"echo '{json.dumps(values)}'\n")


def planner(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PLANNER), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=True)


def parse(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines())


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without pip's configuration (PIP_CONFIG_FILE=/dev/null hides the global
    find-links, extra index and constraint) or any torch/base setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "TORCH_", "HYPERPLANE_")) or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


# ---------- setup_plan.py's command line ----------


def test_python_choice_from_path(fake_bin: Path) -> None:
    fake_python(fake_bin, "python3.10", "3.10.12")
    fake_python(fake_bin, "python3.13", "3.13.1")
    fake_python(fake_bin, "python3.12", "3.12.3")
    plan = parse(planner("python", "--for", "sdk", env=clean_env(PATH=str(fake_bin))).stdout)
    assert (plan["action"], plan["python"], plan["tag"]) == ("use", str(fake_bin / "python3.12"), "cp312")


def test_only_python310_on_path_fails_with_the_fix(fake_bin: Path) -> None:
    fake_python(fake_bin, "python3.10", "3.10.12")
    plan = parse(planner("python", "--for", "sdk", env=clean_env(PATH=str(fake_bin))).stdout)
    assert plan["action"] == "fail"
    assert "python3.10 (3.10.12)" in plan["message"] and "HYPERPLANE_PYTHON" in plan["message"]


def test_hyperplane_python_overrides_path(fake_bin: Path, tmp_path: Path) -> None:
    fake_python(fake_bin, "python3.11", "3.11.9")
    mine = fake_python(tmp_path / "mine", "python3.13", "3.13.0")
    plan = parse(planner("python", env=clean_env(PATH=str(fake_bin), HYPERPLANE_PYTHON=str(mine))).stdout)
    assert plan["python"] == str(mine)


def test_torch_index_url_is_configurable_with_a_documented_default(tmp_path: Path) -> None:
    env = clean_env(HYPERPLANE_TORCH_CACHE=str(tmp_path / "cache"))
    unsupported = ["torch-wheel", "--for", "image", "--arch", "s390x" if ARCH != "s390x" else "ppc64le"]
    assert "not supported" in planner(*unsupported, env=env).stdout
    args = ["torch-wheel", "--for", "image", "--arch", ARCH, "--python", str(VENV_PYTHON)]
    plan = planner(*args, env=env).stdout
    assert "--index-url https://download.pytorch.org/whl/cpu " in plan
    plan = planner(*args, env={**env, "TORCH_CPU_INDEX_URL": "file:///srv/torch-index"}).stdout
    assert "--index-url file:///srv/torch-index " in plan
    wheels = tmp_path / "w"
    fake_wheel(wheels, CPU_311)
    plan = planner(*args, env={**env, "TORCH_WHEEL_DIR": str(wheels)}).stdout
    assert parse(plan)["wheel"] == str(wheels / CPU_311)


def test_pytest_needs_on_the_command_line() -> None:
    env = clean_env()
    assert planner("pytest-needs", "--", "-m", "not docker and not sdk", env=env).stdout.strip() == "docker=0 sdk=0"
    assert planner("pytest-needs", "--", env=env).stdout.strip() == "docker=1 sdk=1"


# ---------- bounded docker pull ----------


@pytest.mark.parametrize(("script", "pulled", "said"), [
    ('echo "Error response from daemon: lookup registry-1.docker.io: no such host"; exit 1', False, "no such host"),
    ("sleep 30", False, "no registry answered within 1 s"),
    ('echo "3.11: Pulling from library/python"; sleep 2; echo "Status: Downloaded newer image"', True, "Status"),
])
def test_pull_gives_up_only_when_no_registry_answers(fake_bin: Path, script: str, pulled: bool, said: str) -> None:
    docker = executable(fake_bin / "docker", script + "\n")
    started = time.monotonic()
    result = setup_plan.pull("python:3.11-slim-bookworm", answer_timeout=1.0, command=(str(docker),))
    assert result[0] is pulled and said in result[1]
    assert time.monotonic() - started < 10


# ---------- scripts/lib/common.sh with a fake docker ----------

FAKE_DOCKER = r"""
echo "$*" >> "$FAKE_DOCKER_LOG"
for last; do :; done
case "$1" in
  info) [ "${2:-}" = --format ] && echo "$FAKE_DOCKER_ARCH"; exit 0 ;;
  image)
    case "$2" in
      inspect) case " ${FAKE_DOCKER_IMAGES:-} " in
          *" $last "*) [ "$3" = -f ] && echo "${FAKE_DOCKER_LABEL:-2}"; exit 0 ;;
          *) echo "Error: No such image: $last" >&2; exit 1 ;;
        esac ;;
      ls) echo "$last  1GB"; exit 0 ;;
    esac ;;
  pull) case "${FAKE_DOCKER_PULL:-fail}" in
      ok) echo "3.11-slim-bookworm: Pulling from library/python"; echo "Status: Downloaded newer image"; exit 0 ;;
      *) echo 'Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: no such host'; exit 1 ;;
    esac ;;
  build) exit 0 ;;
  compose) exit 0 ;;
esac
echo "fake docker: unexpected: $*" >&2
exit 99
"""


def run_bash(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source scripts/lib/common.sh; {script}"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture
def docker_env(fake_bin: Path, tmp_path: Path) -> dict[str, str]:
    executable(fake_bin / "docker", FAKE_DOCKER)
    return clean_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_DOCKER_LOG=str(tmp_path / "docker.log"),
                     FAKE_DOCKER_ARCH=platform.machine(), HYPERPLANE_TORCH_CACHE=str(tmp_path / "cache"))


def docker_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_DOCKER_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_base_image_registry_image_already_here(docker_env: dict[str, str]) -> None:
    env = {**docker_env, "FAKE_DOCKER_IMAGES": "python:3.11-slim-bookworm"}
    result = run_bash('ensure_base_image; echo "BASE=$BASE_IMAGE"', env)
    assert result.returncode == 0, result.stderr
    assert "BASE=python:3.11-slim-bookworm" in result.stdout
    assert not any(c.startswith("pull") for c in docker_calls(env))


def test_base_image_pulled_when_a_registry_answers(docker_env: dict[str, str]) -> None:
    env = {**docker_env, "FAKE_DOCKER_PULL": "ok"}
    result = run_bash('ensure_base_image; echo "BASE=$BASE_IMAGE"', env)
    assert result.returncode == 0, result.stderr
    assert "BASE=python:3.11-slim-bookworm" in result.stdout
    assert "pull python:3.11-slim-bookworm" in docker_calls(env)


def test_base_image_debootstrap_image_of_this_recipe_is_kept(docker_env: dict[str, str]) -> None:
    env = {**docker_env, "FAKE_DOCKER_IMAGES": "hyperplane/python:3.11-bookworm"}
    result = run_bash('ensure_base_image; echo "BASE=$BASE_IMAGE"', env)
    assert "BASE=hyperplane/python:3.11-bookworm" in result.stdout
    assert not any(c.startswith("pull") for c in docker_calls(env))


def test_base_image_override_that_cannot_be_pulled_names_step_cause_and_fix(docker_env: dict[str, str]) -> None:
    env = {**docker_env, "HYPERPLANE_BASE_IMAGE": "registry.example/python:3.11"}
    result = run_bash("step base-image ensure_base_image", env)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: base-image: HYPERPLANE_BASE_IMAGE=registry.example/python:3.11 could not be")
    assert "no such host" in error and "Fix:" in error


def test_a_failing_step_is_named(docker_env: dict[str, str]) -> None:
    result = run_bash("step mystep false", docker_env)
    assert result.returncode == 1
    assert "error: mystep: `false` failed (exit 1)" in result.stderr
    result = run_bash('step mystep die "the cause. Fix: the fix"', docker_env)
    assert result.stderr.strip() == "error: mystep: the cause. Fix: the fix"


# ---------- the torch wheel from a file index (the PyTorch CPU index's stand-in) ----------


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="needs .venv's pip")
def test_torch_wheel_downloaded_from_the_index_when_no_local_one(docker_env: dict[str, str], tmp_path: Path) -> None:
    wheels = [fake_wheel(tmp_path / "served", CPU_311),
              fake_wheel(tmp_path / "served", f"torch-2.13.0-cp311-cp311-manylinux_2_28_{ARCH}.whl")]
    env = {**docker_env, "TORCH_CPU_INDEX_URL": file_index(tmp_path / "index", wheels)}
    result = run_bash('torch_wheel image "$(docker info --format x)"; echo "WHEEL=$TORCH_WHEEL"', env)
    assert result.returncode == 0, result.stderr
    assert f"WHEEL={tmp_path / 'cache' / CPU_311}" in result.stdout
    assert "downloading torch==2.13.0+cpu from file://" in result.stderr
    # the venv's wheel: its own tags; now in the cache, so no second download
    result = run_bash(f'torch_wheel venv "{VENV_PYTHON}"; echo "WHEEL=$TORCH_WHEEL"', env)
    assert f"WHEEL={tmp_path / 'cache' / CPU_311}" in result.stdout and "downloading" not in result.stderr


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="needs .venv's pip")
def test_torch_wheel_not_on_the_index_says_what_to_do(docker_env: dict[str, str], tmp_path: Path) -> None:
    other = fake_wheel(tmp_path / "served", CPU_311.replace("cp311", "cp312"))
    env = {**docker_env, "TORCH_CPU_INDEX_URL": file_index(tmp_path / "index", [other])}
    result = run_bash(f"step torch-wheel torch_wheel image {ARCH}", env)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: torch-wheel: no CPU torch 2.13.0 wheel for cp311 Linux {ARCH}")
    assert "TORCH_WHEEL_DIR=<folder>" in error and "pip said:" in error


# ---------- scripts/test in a scratch copy: what it sets up for a marker expression ----------


@pytest.fixture
def scratch(tmp_path: Path, docker_env: dict[str, str]) -> Path:
    """The scripts, requirements and Dockerfiles in a scratch folder, with a .venv whose python is the real
    one (its stamp current) and whose ruff, mypy and pytest only record their arguments."""
    copy = tmp_path / "repo"
    for name in ("scripts", "requirements"):
        shutil.copytree(ROOT / name, copy / name)
    for name in ("pyproject.toml", "Dockerfile.train", "Dockerfile.serve"):
        shutil.copy(ROOT / name, copy / name)
    venv = copy / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(VENV_PYTHON.resolve())
    for tool in ("ruff", "mypy", "pytest"):
        executable(venv / tool, f'echo "{tool} $*" >> "$FAKE_DOCKER_LOG.tools"\n')
    files = ("requirements/dev.txt requirements/serve.txt requirements/inference.txt requirements/train.txt "
             "requirements/torch.txt pyproject.toml")
    result = run_bash(f"stamp {files} > .venv/.hyperplane-stamp", docker_env, cwd=copy)
    assert result.returncode == 0, result.stderr
    return copy


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="needs .venv's python")
def test_scripts_test_not_docker_not_sdk_never_runs_docker(scratch: Path, docker_env: dict[str, str]) -> None:
    result = subprocess.run([str(scratch / "scripts" / "test"), "-m", "not docker and not sdk"], cwd=scratch,
                            capture_output=True, text=True, env=docker_env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert docker_calls(docker_env) == []
    assert ".venv:" in result.stderr and "docker:" not in result.stderr and ".venv-sdk2" not in result.stderr
    tools = Path(docker_env["FAKE_DOCKER_LOG"] + ".tools").read_text().splitlines()
    assert [t.strip() for t in tools] == ["ruff check .", "mypy", "pytest --timeout=900 -m not docker and not sdk"]


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="needs .venv's python")
def test_scripts_test_not_sdk_builds_the_images_on_the_registry_base(scratch: Path, docker_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    fake_wheel(tmp_path / "w", CPU_311)
    env = {**docker_env, "FAKE_DOCKER_PULL": "ok", "TORCH_WHEEL_DIR": str(tmp_path / "w")}
    result = subprocess.run([str(scratch / "scripts" / "test"), "-m", "not sdk"], cwd=scratch, capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    calls = docker_calls(env)
    assert "pull python:3.11-slim-bookworm" in calls
    builds = [c for c in calls if c.startswith("build")]
    assert len(builds) == 2 and all("BASE_IMAGE=python:3.11-slim-bookworm" in c for c in builds)
    assert not any("compose" in c for c in calls) and ".venv-sdk2" not in result.stderr
    assert (scratch / "build" / "wheels" / CPU_311).exists()
