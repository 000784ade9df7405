"""The set-up's decisions on faked machines (scripts/lib/setup_plan.py): which Python makes the venvs, which
torch wheel from where, which base image, and what a pytest command line needs. No Docker, no network."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from tests.setup.conftest import setup_plan

TORCH = "2.13.0"
Host = setup_plan.Host
Interpreter = setup_plan.Interpreter
WheelTarget = setup_plan.WheelTarget

DEBIAN_ROOT = Host(os="linux", arch="x86_64", root=True, apt=True)  # this machine, CI (case 1)
UBUNTU_USER = Host(os="linux", arch="x86_64", root=False, apt=True)  # a laptop (case 2)
UBUNTU_ROOT = Host(os="linux", arch="x86_64", root=True, apt=True)
MAC = Host(os="macos", arch="aarch64")  # Apple silicon (case 3)
GRAVITON = Host(os="linux", arch="aarch64", root=False, apt=True)


def python(version: str, path: str = "", **facts: Any) -> Any:
    major, minor, micro = (int(v) for v in version.split("."))
    path = path or f"/usr/bin/python{major}.{minor}"
    facts.setdefault("arch", "x86_64")
    return Interpreter(command=path, executable=path, version=(major, minor, micro), **facts)


def choose(host: Any, found: list[Any], purpose: str = "sdk", apt: list[str] | None = None) -> Any:
    return setup_plan.choose_python(host, found, purpose, TORCH, apt)


# ---------- which Python ----------


def test_debian_root_uses_its_python311() -> None:
    plan = choose(DEBIAN_ROOT, [python("3.11.2")], "dev")
    assert (plan.action, plan["python"], plan["tag"]) == ("use", "/usr/bin/python3.11", "cp311")


def test_311_is_preferred_whatever_the_path_order() -> None:
    found = [python("3.13.1", "/opt/homebrew/bin/python3.13"), python("3.12.3"),
             python("3.11.9", "/home/u/.pyenv/3.11")]
    assert choose(UBUNTU_USER, found)["python"] == "/home/u/.pyenv/3.11"
    assert choose(UBUNTU_USER, found[:2])["version"] == "3.12"


def test_the_first_on_path_wins_among_equals() -> None:
    found = [python("3.12.3", "/a/python3.12"), python("3.12.8", "/b/python3.12")]
    assert choose(UBUNTU_USER, found)["python"] == "/a/python3.12"


@pytest.mark.parametrize("version", ["3.10.12", "3.14.0", "3.9.6"])
def test_pythons_outside_311_313_are_not_used(version: str) -> None:
    plan = choose(UBUNTU_USER, [python(version)])
    assert plan.action == "fail"
    assert f"({version})" in plan["message"] and "3.11, 3.12 or 3.13" in plan["message"]
    assert "numpy 2.4" in plan["message"]


def test_ubuntu_2404_user_without_venv_module_is_told_which_package_and_why() -> None:
    plan = choose(UBUNTU_USER, [python("3.12.3", "/usr/bin/python3", venv=False)])
    assert plan.action == "fail"  # never apt without root
    message = plan["message"]
    assert "cannot create virtual environments" in message
    assert "sudo apt-get install -y python3.12-venv" in message and "only root" in message


def test_ubuntu_2404_root_installs_the_venv_package() -> None:
    plan = choose(UBUNTU_ROOT, [python("3.12.3", venv=False)], "sdk")
    assert (plan.action, plan.values["packages"]) == ("apt", ["python3.12-venv"])


def test_dev_venv_needs_headers_and_a_compiler_for_sagemaker_training() -> None:
    no_tools = Host(os="linux", arch="x86_64", root=False, apt=True, compiler=False)
    plan = choose(no_tools, [python("3.12.3", headers=False)], "dev")
    assert plan.action == "fail"
    assert "sagemaker-training" in plan["message"]
    assert "sudo apt-get install -y gcc libc6-dev python3.12-dev" in plan["message"]
    # the SDK venvs compile nothing
    assert choose(no_tools, [python("3.12.3", headers=False)], "sdk").action == "use"
    root = Host(os="linux", arch="x86_64", root=True, apt=True, compiler=False)
    assert choose(root, [python("3.11.2", headers=False)], "dev").values["packages"] == [
        "gcc", "libc6-dev", "python3.11-dev"]


def test_dev_venv_prefers_a_python_that_needs_nothing_installed() -> None:
    found = [python("3.11.2", headers=False), python("3.12.1", "/home/u/.pyenv/versions/3.12.1/bin/python3.12")]
    assert choose(UBUNTU_USER, found, "dev")["version"] == "3.12"
    assert choose(UBUNTU_USER, found, "sdk")["version"] == "3.11"


def test_only_python310_as_root_installs_python311_from_apt() -> None:
    plan = choose(UBUNTU_ROOT, [python("3.10.12", "/usr/bin/python3")], "sdk", apt=["3.11", "3.12"])
    assert (plan.action, plan.values["packages"]) == ("apt", ["python3.11", "python3.11-venv"])
    plan = choose(UBUNTU_ROOT, [], "dev", apt=None)  # apt's lists unknown: the distribution's own python3
    assert plan.values["packages"] == ["python3", "python3-venv", "python3-dev", "gcc", "libc6-dev"]
    plan = choose(UBUNTU_ROOT, [python("3.10.12")], "sdk", apt=[])
    assert plan.action == "fail" and "HYPERPLANE_PYTHON" in plan["message"]


def test_only_python310_as_a_user_says_what_to_install() -> None:
    plan = choose(UBUNTU_USER, [python("3.10.12", "/usr/bin/python3")], "sdk", apt=["3.11"])
    assert plan.action == "fail"
    assert "sudo apt-get install -y python3.11 python3.11-venv" in plan["message"]


def test_macos_uses_homebrews_python_and_never_mentions_apt() -> None:
    brew = python("3.13.1", "/opt/homebrew/bin/python3.13", arch="aarch64")
    system = python("3.9.6", "/usr/bin/python3", arch="aarch64")
    assert choose(MAC, [system, brew], "dev")["python"] == "/opt/homebrew/bin/python3.13"
    plan = choose(MAC, [system], "dev")
    assert plan.action == "fail"
    assert "brew install python@3.12" in plan["message"] and "apt" not in plan["message"]
    no_tools = Host(os="macos", arch="aarch64", compiler=False)
    assert "xcode-select --install" in choose(no_tools, [brew], "dev")["message"]


def test_a_rosetta_python_on_apple_silicon_is_not_used() -> None:
    rosetta = python("3.12.2", "/usr/local/bin/python3.12", arch="x86_64")
    plan = choose(MAC, [rosetta])
    assert plan.action == "fail" and "for x86_64" in plan["message"]


def test_free_threaded_builds_are_not_used() -> None:
    plan = choose(UBUNTU_USER, [python("3.13.1", free_threaded=True), python("3.12.3")])
    assert plan["version"] == "3.12"


def test_graviton_is_supported() -> None:
    plan = choose(GRAVITON, [python("3.12.3", arch="aarch64")])
    assert (plan.action, plan["tag"]) == ("use", "cp312")


@pytest.mark.parametrize(("os_name", "arch"), [("macos", "x86_64"), ("linux", "ppc64le"), ("linux", "armv7l"),
                                               ("freebsd", "x86_64")])
def test_unsupported_platforms_fail_at_once_in_one_line(os_name: str, arch: str) -> None:
    plan = choose(Host(os=os_name, arch=arch, root=True, apt=True), [python("3.11.2", arch=arch)], "dev")
    assert plan.action == "fail"
    message = plan["message"]
    assert "\n" not in message and "not supported" in message
    assert "Linux x86_64, Linux aarch64" in message and "macOS arm64" in message


def test_platform_names_are_normalized() -> None:
    assert setup_plan.normalize_arch("arm64") == setup_plan.normalize_arch("aarch64") == "aarch64"
    assert setup_plan.normalize_arch("AMD64") == "x86_64"
    assert setup_plan.normalize_os("Darwin") == "macos"


# ---------- which torch wheel ----------

X86_311 = WheelTarget("cp311", "linux", "x86_64")
CPU_311 = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.mark.parametrize(("name", "target", "fits"), [
    (CPU_311, X86_311, True),
    ("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", X86_311, False),  # PyPI's: the CUDA build
    ("torch-2.13.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", X86_311, False),
    ("torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl", X86_311, False),
    ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl", X86_311, False),
    ("torch-2.13.0+cpu-cp311-cp311-musllinux_1_2_x86_64.whl", X86_311, False),
    ("torch-2.13.0+cpu-cp311-cp311-win_amd64.whl", X86_311, False),
    ("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", X86_311, True),
    ("torch-2.13.0+cpu-cp313-cp313t-manylinux_2_28_x86_64.whl", WheelTarget("cp313", "linux", "x86_64"), False),
    ("torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl", WheelTarget("cp312", "linux", "x86_64"), True),
    ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl", WheelTarget("cp311", "linux", "aarch64"), True),
    ("torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl", WheelTarget("cp311", "linux", "aarch64"), True),
    ("torch-2.13.0-cp312-none-macosx_11_0_arm64.whl", WheelTarget("cp312", "macos", "aarch64"), True),
    ("torch-2.13.0-cp312-none-macosx_11_0_arm64.whl", WheelTarget("cp311", "macos", "aarch64"), False),
    ("torch-2.13.0-cp312-none-macosx_10_9_x86_64.whl", WheelTarget("cp312", "macos", "aarch64"), False),
    ("torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", X86_311, False),
])
def test_which_wheel_fits(name: str, target: Any, fits: bool) -> None:
    assert setup_plan.wheel_fits(name, TORCH, target) is fits


def _plan(target: Any, folders: dict[str, list[str]], order: list[tuple[str, str]], cross: bool = False,
          download: bool = True, url: str = "https://download.pytorch.org/whl/cpu") -> Any:
    return setup_plan.torch_plan(TORCH, target, order, lambda f: folders.get(f, []), "/cache", url, cross, download)


def test_wheel_sources_in_order_torch_wheel_dir_find_links_cache() -> None:
    order = [("TORCH_WHEEL_DIR", "/mine"), ("pip's find-links", "/opt/wheels")]
    everywhere = {"/mine": [CPU_311], "/opt/wheels": [CPU_311], "/cache": [CPU_311]}
    assert _plan(X86_311, everywhere, order)["wheel"] == f"/mine/{CPU_311}"
    assert _plan(X86_311, {**everywhere, "/mine": []}, order)["wheel"] == f"/opt/wheels/{CPU_311}"
    assert _plan(X86_311, {"/cache": [CPU_311]}, order)["wheel"] == f"/cache/{CPU_311}"
    # a folder holding only other builds is passed over
    assert _plan(X86_311, {"/mine": ["torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"],
                           "/cache": [CPU_311]}, order)["wheel"] == f"/cache/{CPU_311}"


def test_no_local_wheel_downloads_the_cpu_build_from_the_index() -> None:
    plan = _plan(WheelTarget("cp312", "linux", "x86_64"), {}, [("TORCH_WHEEL_DIR", "")], url="file:///idx")
    assert plan.action == "download"
    args = plan.values["pip_args"]
    assert args[:3] == ["download", "--no-deps", "--only-binary=:all:"]
    assert args[args.index("--index-url") + 1] == "file:///idx" and args[args.index("--dest") + 1] == "/cache"
    assert args[-1] == "torch==2.13.0+cpu"  # never PyPI's plain 2.13.0, the CUDA build
    assert "--platform" not in args  # the venv's own pip knows its own tags


def test_the_image_wheel_is_cp311_linux_for_the_engines_arch() -> None:
    """A Mac's dev venv takes a macOS cp312 wheel; its images, built in Docker Desktop's arm64 VM, the cp311
    manylinux aarch64 one."""
    folders = {"/w": ["torch-2.13.0-cp312-none-macosx_11_0_arm64.whl"]}
    venv = _plan(WheelTarget("cp312", "macos", "aarch64"), folders, [("TORCH_WHEEL_DIR", "/w")])
    assert venv["wheel"] == "/w/torch-2.13.0-cp312-none-macosx_11_0_arm64.whl"
    image = _plan(WheelTarget(setup_plan.IMAGE_PYTHON_TAG, "linux", "aarch64"), folders, [("TORCH_WHEEL_DIR", "/w")],
                  cross=True)
    assert image.action == "download"
    args = image.values["pip_args"]
    assert args[7:13] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    assert "manylinux_2_28_aarch64" in args and "manylinux2014_aarch64" in args
    assert args[-1] == "torch==2.13.0"


def test_after_a_failed_download_the_message_names_both_fixes() -> None:
    plan = _plan(X86_311, {}, [("TORCH_WHEEL_DIR", ""), ("pip's find-links", "/opt/wheels")], download=False)
    assert plan.action == "fail"
    message = plan["message"]
    for part in ("TORCH_CPU_INDEX_URL", "https://download.pytorch.org/whl/cpu", "TORCH_WHEEL_DIR=<folder>", CPU_311,
                 "/opt/wheels"):
        assert part in message


def test_an_unsupported_engine_arch_fails_in_one_line() -> None:
    plan = _plan(WheelTarget("cp311", "linux", "s390x"), {}, [])
    assert plan.action == "fail" and "\n" not in plan["message"]


def test_pip_find_links_from_config_and_environment() -> None:
    config = ("global.find-links='/opt/wheels file:///srv/w'\n:env:.find-links='/opt/wheels'\n"
              "global.extra-index-url='file:///opt/pypi/simple'\nuser.find-links='https://example.org/w'\n")
    assert setup_plan.pip_find_links(config, "/x /y") == ["/opt/wheels", "/srv/w", "/x", "/y"]


def test_the_torch_version_comes_from_requirements() -> None:
    assert setup_plan.torch_version("# x\ntorch==2.13.0\nsympy==1\n") == "2.13.0"
    text = (pathlib.Path(setup_plan.ROOT) / "requirements" / "torch.txt").read_text()
    assert setup_plan.torch_version(text) == TORCH


# ---------- which base image ----------


def base(host: Any = DEBIAN_ROOT, **facts: Any) -> Any:
    facts = {"registry_image": "python:3.11-slim-bookworm", "registry_local": False,
             "default_image": "hyperplane/python:3.11-bookworm", "default_recipe": "absent", "recipe": "2", **facts}
    return setup_plan.base_image_plan(host, **facts)


def test_ci_uses_the_debootstrap_base_it_has_without_trying_a_registry() -> None:
    assert (base(default_recipe="2").action, base(default_recipe="2")["image"]) == (
        "use", "hyperplane/python:3.11-bookworm")


def test_a_pulled_registry_base_is_used_first() -> None:
    plan = base(UBUNTU_USER, registry_local=True, default_recipe="2")
    assert (plan.action, plan["image"]) == ("use", "python:3.11-slim-bookworm")


def test_the_registry_is_tried_before_debootstrap() -> None:
    plan = base(UBUNTU_USER)
    assert (plan.action, plan["image"]) == ("pull", "python:3.11-slim-bookworm")
    assert base(DEBIAN_ROOT, default_recipe="1").action == "pull"  # an old base: the registry first


def test_no_registry_as_root_on_debian_falls_back_to_debootstrap_in_one_line() -> None:
    plan = base(DEBIAN_ROOT, pull_failed="dial tcp: lookup registry-1.docker.io: no such host")
    assert (plan.action, plan["image"]) == ("debootstrap", "hyperplane/python:3.11-bookworm")
    assert "no such host" in plan["note"] and "debootstrap" in plan["note"] and "\n" not in plan["note"]
    assert "recipe 1" in base(DEBIAN_ROOT, default_recipe="1", pull_failed="x")["note"]


def test_no_registry_as_a_user_fails_naming_root_and_the_alternatives() -> None:
    message = base(UBUNTU_USER, pull_failed="no registry answered within 30 s")["message"]
    for part in ("no registry answered within 30 s", "needs root", "HYPERPLANE_BASE_IMAGE", "docker load",
                 "run scripts/bootstrap once as root"):
        assert part in message
    message = base(MAC, pull_failed="x")["message"]
    assert "only on Debian/Ubuntu" in message and "as root" not in message


def test_hyperplane_base_image_is_used_or_pulled_never_replaced() -> None:
    assert base(override="my/python:3.11", override_local=True, registry_local=True)["image"] == "my/python:3.11"
    assert base(override="my/python:3.11").action == "pull"
    plan = base(override="my/python:3.11", pull_failed="denied")
    assert plan.action == "fail" and "HYPERPLANE_BASE_IMAGE=my/python:3.11" in plan["message"]
    # naming the debootstrap base itself never pulls the registry's
    assert base(override="hyperplane/python:3.11-bookworm", registry_local=True).action == "debootstrap"
    assert base(override="hyperplane/python:3.11-bookworm", default_recipe="2")["image"] == (
        "hyperplane/python:3.11-bookworm")


# ---------- what a pytest command line needs ----------


@pytest.mark.parametrize(("args", "docker", "sdk"), [
    ([], True, True),
    (["-m", "not docker and not sdk"], False, False),
    (["-m", "not sdk and not docker"], False, False),
    (["-m", "(not docker) and not (sdk)"], False, False),
    (["-mnot docker and not sdk"], False, False),
    (["-m", "not sdk"], True, False),
    (["-m", "docker and not sdk"], True, False),
    (["-m", "not docker"], False, True),  # the sdk-only test (scripts/aws-run against SDK v2)
    (["-m", "sdk"], True, True),
    (["-m", "slow"], True, True),  # an unknown marker may sit on a docker test
    (["-m", "not slow and not docker and not sdk"], False, False),
    (["-m", "docker(x=1)"], True, True),  # keyword arguments: assume the worst
    (["-m", "not"], True, True),
    (["-m", "docker", "-m", "not docker and not sdk"], False, False),  # the last -m counts
    (["-m", ""], True, True),
    (["tests/model"], False, False),
    (["tests/serving/test_errors.py::test_x", "tests/training", "-x"], False, False),
    (["tests/model", "tests/container"], True, True),
    (["tests"], True, True),
    (["-k", "tests/model"], True, True),
    (["--timeout", "5", "tests/setup"], False, False),
])
def test_pytest_needs(args: list[str], docker: bool, sdk: bool) -> None:
    assert setup_plan.pytest_needs(args) == {"docker": docker, "sdk": sdk}


@pytest.mark.parametrize("expression", [
    "docker", "not docker", "not docker and not sdk", "docker or sdk", "not (docker or sdk)", "a and (b or not c)",
    "not not docker", "(docker)", "docker and sdk or not a", "not a or b and c",
])
def test_marker_expressions_read_as_pytest_reads_them(expression: str) -> None:
    from _pytest.mark.expression import Expression

    ours, theirs = setup_plan.marker_expression(expression), Expression.compile(expression)
    names = ["docker", "sdk", "a", "b", "c"]
    for bits in range(2 ** len(names)):
        markers = {n: bool(bits >> i & 1) for i, n in enumerate(names)}
        assert ours(markers) == theirs.evaluate(lambda name, /, m=markers, **kw: m.get(name, False)), markers
