"""What the images are, as opposed to what they do: sizes, no compiler, no pip in the serving image."""

from __future__ import annotations

import json

import pytest

from tests.container.docker import docker

pytestmark = pytest.mark.docker


def _inspect(image: str) -> dict[str, object]:
    return dict(json.loads(docker("image", "inspect", image).stdout)[0])


def test_the_serving_image_is_smaller(train_image: str, serve_image: str) -> None:
    assert int(_inspect(serve_image)["Size"]) < int(_inspect(train_image)["Size"])  # type: ignore[call-overload]


@pytest.mark.parametrize("which", ["train", "serve"])
def test_no_compiler_and_bind_to_port_label(train_image: str, serve_image: str, which: str) -> None:
    image = train_image if which == "train" else serve_image
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "command -v gcc cc c++ g++ clang || true").stdout
    assert found.strip() == ""
    labels = _inspect(image)["Config"]["Labels"]  # type: ignore[index]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_the_serving_image_has_no_pip(serve_image: str) -> None:
    result = docker("run", "--rm", "--network", "none", "--entrypoint", "python", serve_image, "-m", "pip",
                    "--version", check=False)
    assert result.returncode != 0
    assert "No module named pip" in result.stderr
