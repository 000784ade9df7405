#!/usr/bin/env python3
"""The decisions behind scripts/bootstrap, scripts/build-images and scripts/test, kept apart from the doing
so that tests/setup/ can check them with a faked machine: which Python makes the venvs, which torch wheel
and where it comes from, which base image, and what a pytest command line needs (Docker, the SDK venvs).

Each subcommand gathers the facts it needs (uname, uid, the Pythons on PATH, pip's find-links, ...), decides
with a pure function and prints the plan as shell assignments for `eval` in scripts/lib/common.sh:
`action=use|apt|download|pull|debootstrap|fail` and the values that go with it. A `fail` plan's `message`
names the cause and the fix. Standard library only, and nothing newer than Python 3.8 at run time: it runs
with whatever python3 the machine has, before any venv exists.

    python3 scripts/lib/setup_plan.py {python,torch-wheel,base-image,pull,pytest-needs} --help
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import platform
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Pythons the venvs may use, best first. 3.11 is the images' own Python (Debian bookworm) and mypy's target;
# the pinned numpy 2.4 and scipy 1.17 have no wheels for 3.10, and torch 2.13.0 none beyond 3.13 here.
SUPPORTED_PYTHONS: tuple[tuple[int, int], ...] = ((3, 11), (3, 12), (3, 13))
IMAGE_PYTHON_TAG = "cp311"  # the images' Python: Debian bookworm's python3 (3.11)
# (os, arch) pairs with CPU wheels of torch 2.13.0 on the PyTorch CPU index.
PLATFORMS = (("linux", "x86_64"), ("linux", "aarch64"), ("macos", "aarch64"))
DEFAULT_TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
TORCH_CACHE = "build/torch-wheels"  # downloaded wheels, relative to ROOT (HYPERPLANE_TORCH_CACHE: elsewhere)
PYTHON_NAMES = ("python3.11", "python3.12", "python3.13", "python3", "python3.10")
# `docker pull` lines that prove a registry answered (the rest may then take minutes on a slow link).
PULL_ANSWERED = re.compile(r"Pulling from|Pulling fs layer|Already exists|Digest: sha256|Status: ")


# ---------- facts ----------


@dataclasses.dataclass(frozen=True)
class Host:
    """The machine: os is linux/macos/..., arch x86_64/aarch64/..., apt means apt-get and dpkg-query exist,
    compiler that a C compiler works (the dev venv builds C extensions: sagemaker-training's and the project's
    own model/_rowmlp.c)."""

    os: str
    arch: str
    root: bool = False
    apt: bool = False
    compiler: bool = True


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python found on PATH, as it describes itself (PROBE)."""

    command: str  # as found, e.g. /usr/bin/python3.11
    executable: str  # its sys.executable: the real interpreter behind a pyenv shim
    version: tuple[int, int, int]
    venv: bool = True  # `import venv, ensurepip` works (Debian/Ubuntu ship it as python3.X-venv)
    headers: bool = True  # Python.h is there (Debian/Ubuntu: python3.X-dev)
    arch: str = "x86_64"
    free_threaded: bool = False

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    @property
    def distribution_python(self) -> bool:
        """Debian's or Ubuntu's own python3.X, whose venv module and headers are separate packages."""
        return os.path.dirname(self.executable) in ("/usr/bin", "/bin")

    def describe(self) -> str:
        return f"{self.command} ({'.'.join(map(str, self.version))})"


@dataclasses.dataclass(frozen=True)
class WheelTarget:
    """What a torch wheel must fit: a CPython tag (cp311), an os and an arch."""

    tag: str
    os: str
    arch: str

    def describe(self) -> str:
        return f"{self.tag} {OS_NAMES.get(self.os, self.os)} {self.arch}"


@dataclasses.dataclass
class Plan:
    action: str
    values: dict[str, str | list[str]] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        value = self.values[key]
        return value if isinstance(value, str) else " ".join(value)

    def shell(self) -> str:
        """`name=value` lines for bash's eval; lists become arrays."""
        lines = [f"action={shlex.quote(self.action)}"]
        for key, value in self.values.items():
            if isinstance(value, str):
                lines.append(f"{key}={shlex.quote(value)}")
            else:
                lines.append(f"{key}=({' '.join(shlex.quote(v) for v in value)})")
        return "\n".join(lines)


OS_NAMES = {"linux": "Linux", "macos": "macOS"}


def normalize_os(sysname: str) -> str:
    return {"Linux": "linux", "Darwin": "macos"}.get(sysname, sysname.lower())


def normalize_arch(machine: str) -> str:
    machine = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "arm64v8": "aarch64"}.get(machine, machine)


# ---------- platform ----------


def platform_error(os_name: str, arch: str, torch_version: str) -> str | None:
    """None where torch has CPU wheels for (os_name, arch), else the one line that says what is supported."""
    if (os_name, arch) in PLATFORMS:
        return None
    hint = ""
    if os_name == "macos" and arch == "x86_64":
        hint = (" (PyTorch has published no macOS x86_64 wheels since 2.2; on an Apple silicon Mac, run an arm64"
                " shell and Python, not one under Rosetta)")
    return (f"{OS_NAMES.get(os_name, os_name)} {arch} is not supported{hint}: hyperplane needs torch {torch_version}"
            " CPU wheels, which exist for Linux x86_64, Linux aarch64 (arm64: Graviton, Ampere) and macOS arm64"
            " (Apple silicon)")


# ---------- which Python makes the venvs ----------


def _in_range(interpreter: Interpreter) -> bool:
    return interpreter.version[:2] in SUPPORTED_PYTHONS and not interpreter.free_threaded


def _rank(interpreter: Interpreter) -> int:
    return SUPPORTED_PYTHONS.index(interpreter.version[:2])


def _build_needs(host: Host, interpreter: Interpreter) -> list[str]:
    """What the dev venv lacks to compile C extensions (sagemaker-training's, model/_rowmlp.c) with this
    interpreter."""
    needs = []
    if not host.compiler:
        needs.append("a C compiler")
    if not interpreter.headers:
        needs.append(f"Python {interpreter.minor}'s headers (Python.h)")
    return needs


def _build_packages(host: Host, interpreter: Interpreter) -> list[str]:
    packages = []
    if not host.compiler:
        packages += ["gcc", "libc6-dev"]
    if not interpreter.headers:
        packages.append(f"python{interpreter.minor}-dev")
    return packages


def _need_system_packages(host: Host, packages: Sequence[str], why: str, elsewhere: str) -> Plan:
    """Install `packages` with apt (root on Debian/Ubuntu), or fail saying what, why and how.
    `elsewhere`: the fix where apt is not the way (macOS, other distributions)."""
    listed = " ".join(packages)
    if host.apt and host.root:
        return Plan("apt", {"packages": list(packages), "why": why})
    if host.apt:
        return Plan("fail", {"message": (
            f"{why}. That needs the system packages {listed}, and only root can install them: run"
            f" `sudo apt-get install -y {listed}` (or this script as root), then run it again;"
            " or point HYPERPLANE_PYTHON at a Python 3.11-3.13 that has what is missing")})
    return Plan("fail", {"message": f"{why}. {elsewhere}, then run this again"})


def choose_python(host: Host, found: Sequence[Interpreter], purpose: str, torch_version: str,
                  apt_versions: Sequence[str] | None = None) -> Plan:
    """The interpreter for a venv. purpose: `dev` (.venv: compiles C extensions, so a Python with
    headers and a compiler is preferred) or `sdk` (.venv-sdk2/3). found: the interpreters on PATH in PATH
    order (or HYPERPLANE_PYTHON's alone). apt_versions: the python3.X packages apt could install (3.11..3.13),
    None when unknown. Plans: use (python, version, tag), apt (packages, why; then ask again) or fail."""
    error = platform_error(host.os, host.arch, torch_version)
    if error:
        return Plan("fail", {"message": error})
    dev = purpose == "dev"
    fits = [i for i in found if _in_range(i) and i.arch == host.arch]
    usable = [i for i in fits if i.venv]
    if usable:
        best = min(usable, key=lambda i: (dev and bool(_build_needs(host, i)), _rank(i), usable.index(i)))
        needs = _build_needs(host, best) if dev else []
        if not needs:
            return Plan("use", {"python": best.executable, "version": best.minor, "tag": best.tag})
        why = (f"{best.describe()} is the Python for .venv, and requirements/train.txt's sagemaker-training is"
               f" a source package with a C extension: building it needs {' and '.join(needs)}")
        elsewhere = ("Install the Xcode command line tools (`xcode-select --install`)" if host.os == "macos"
                     else "Install a C compiler and the Python headers (Fedora: `sudo dnf install gcc python3-devel`)")
        return _need_system_packages(host, _build_packages(host, best), why, elsewhere)
    if fits:  # a Python of the right version whose venv module is missing: Debian and Ubuntu split it off
        best = min(fits, key=lambda i: (_rank(i), fits.index(i)))
        packages = [f"python{best.minor}-venv"] + (_build_packages(host, best) if dev else [])
        why = (f"{best.describe()} cannot create virtual environments: Debian and Ubuntu ship its venv module"
               " as a separate package")
        return _need_system_packages(host, packages, why, "Install a Python 3.11-3.13 that has its venv module")
    seen = ", ".join(i.describe() + ("" if i.arch == host.arch else f" for {i.arch}") for i in found) or "none"
    why = (f"no {host.arch} Python 3.11, 3.12 or 3.13 on PATH (found: {seen}); the pinned numpy 2.4 and scipy"
           " 1.17 need Python 3.11 or newer")
    if host.apt:
        if apt_versions is None:  # apt's package lists are unknown: the distribution's own python3
            packages = ["python3", "python3-venv"] + (["python3-dev", "gcc", "libc6-dev"] if dev else [])
        else:
            offered = [v for v in (f"{major}.{minor}" for major, minor in SUPPORTED_PYTHONS) if v in apt_versions]
            if not offered:
                return Plan("fail", {"message": (
                    f"{why}, and apt offers none of python3.11, python3.12, python3.13. Install one another way"
                    " (`uv python install 3.12`, pyenv) and point HYPERPLANE_PYTHON at it, then run this again")})
            packages = [f"python{offered[0]}", f"python{offered[0]}-venv"]
            if dev:
                packages += [f"python{offered[0]}-dev", "gcc", "libc6-dev"]
        return _need_system_packages(host, packages, why, "")
    if host.os == "macos":
        elsewhere = ("Install one (`brew install python@3.12`, the python.org installer, or `uv python install"
                     " 3.12`) and put it on PATH or point HYPERPLANE_PYTHON at it")
    else:
        elsewhere = ("Install one with your package manager, `uv python install 3.12` or pyenv, and put it on PATH"
                     " or point HYPERPLANE_PYTHON at it")
    return Plan("fail", {"message": f"{why}. {elsewhere}, then run this again"})


# ---------- which torch wheel, from where ----------

WHEEL_NAME = re.compile(r"^torch-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")


def wheel_fits(name: str, torch_version: str, target: WheelTarget) -> bool:
    """Whether `name` is the CPU build of torch `torch_version` for `target`. Linux x86_64 wheels must say
    +cpu (PyPI's plain ones are the multi-GB CUDA build); aarch64 and macOS builds without +cpu are CPU
    builds. Free-threaded (cp313t) and musl builds never fit."""
    match = WHEEL_NAME.match(name)
    if not match:
        return False
    versions = {f"{torch_version}+cpu"}
    if not (target.os == "linux" and target.arch == "x86_64"):
        versions.add(torch_version)
    if match["version"] not in versions:
        return False
    if target.tag not in match["python"].split(".") or not set(match["abi"].split(".")) & {target.tag, "none"}:
        return False
    platforms = match["platform"].split(".")
    if target.os == "linux":
        return any(p.startswith(("manylinux", "linux_")) and p.endswith("_" + target.arch) for p in platforms)
    if target.os == "macos":
        return any(p.startswith("macosx_") and p.endswith(("_arm64", "_universal2")) for p in platforms)
    return False


def find_wheel(names_by_dir: Iterable[tuple[str, Sequence[str]]], torch_version: str,
               target: WheelTarget) -> str | None:
    """The first fitting wheel, folders in order; within a folder +cpu builds first, then by name."""
    for folder, names in names_by_dir:
        fitting = sorted((n for n in names if wheel_fits(n, torch_version, target)), key=lambda n: ("+cpu" not in n, n))
        if fitting:
            return os.path.join(folder, fitting[0])
    return None


def example_wheel(torch_version: str, target: WheelTarget) -> str:
    if target.os == "macos":
        return f"torch-{torch_version}-{target.tag}-none-macosx_11_0_arm64.whl"
    return f"torch-{torch_version}+cpu-{target.tag}-{target.tag}-manylinux_2_28_{target.arch}.whl"


def torch_plan(torch_version: str, target: WheelTarget, folders: Sequence[tuple[str, str]],
               listing: Callable[[str], Sequence[str]], cache: str, index_url: str, cross: bool,
               download: bool = True) -> Plan:
    """Where the CPU torch wheel for `target` comes from. folders: (label, folder) in the order they are
    searched (TORCH_WHEEL_DIR, pip's find-links); the download cache `cache` is searched last. listing(folder)
    gives the file names in a folder. cross: the wheel is for another interpreter than pip's own (the image's
    cp311 Linux wheel), so pip is told the target's tags. Plans: use (wheel), download (pip_args, then ask
    again with download=False: use or fail) or fail (message)."""
    error = platform_error(target.os, target.arch, torch_version)
    if error:
        return Plan("fail", {"message": error})
    searched = [*folders, ("the download cache", cache)]
    wheel = find_wheel(((folder, listing(folder)) for _, folder in searched), torch_version, target)
    if wheel:
        return Plan("use", {"wheel": wheel})
    example = example_wheel(torch_version, target)
    where = ", ".join(f"{label} ({folder})" for label, folder in folders if folder) or "no local folder"
    message = (f"no CPU torch {torch_version} wheel for {target.describe()} in {where} or {cache}, and pip could"
               f" not download one from {index_url} (TORCH_CPU_INDEX_URL). Fix: set TORCH_CPU_INDEX_URL to a"
               f" PyTorch CPU wheel index or mirror you can reach (default {DEFAULT_TORCH_CPU_INDEX_URL}), or put"
               f" {example} in a folder and set TORCH_WHEEL_DIR=<folder>")
    if not download:
        return Plan("fail", {"message": message})
    # ==X+cpu where a plain X would be the CUDA build (Linux x86_64): pip can then never take that one from
    # another index the user's pip configuration adds.
    cpu_only = target.os == "linux" and target.arch == "x86_64"
    args = ["download", "--no-deps", "--only-binary=:all:", "--index-url", index_url, "--dest", cache]
    if cross:
        args += ["--python-version", f"{target.tag[2]}.{target.tag[3:]}", "--implementation", "cp",
                 "--abi", target.tag]
        for tag in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "linux"):
            args += ["--platform", f"{tag}_{target.arch}"]
    args.append(f"torch=={torch_version}+cpu" if cpu_only else f"torch=={torch_version}")
    return Plan("download", {"pip_args": args, "requirement": args[-1], "index_url": index_url, "cache": cache,
                             "message": message})


def pip_find_links(config_list: str, environment: str) -> list[str]:
    """Local folders among pip's find-links: `pip config list` output and PIP_FIND_LINKS."""
    values = [*re.findall(r"^[^=\n]*find-links='(.*)'$", config_list, re.M), environment]
    folders: list[str] = []
    for value in values:
        for item in value.split():
            folder = item[len("file://"):] if item.startswith("file://") else item
            if "://" not in folder and folder not in folders:
                folders.append(folder)
    return folders


def torch_version(requirements: str) -> str:
    match = re.search(r"^torch==([^\s;#]+)", requirements, re.M)
    if not match:
        raise SystemExit("requirements/torch.txt pins no torch==VERSION")
    return match[1]


# ---------- which base image ----------


def base_image_plan(host: Host, *, registry_image: str, registry_local: bool, default_image: str,
                    default_recipe: str, recipe: str, override: str = "", override_local: bool = False,
                    pull_failed: str | None = None) -> Plan:
    """The base image of both Dockerfiles, registry first, debootstrap last:
    HYPERPLANE_BASE_IMAGE (override) when set; else the registry image when it is here already; else
    default_image when it was made by the current debootstrap recipe; else pull the registry image; and
    when that failed (pull_failed: why), build default_image with debootstrap, which needs root on a
    Debian-like Linux. default_recipe: default_image's org.hyperplane.base.recipe label, `absent` without
    the image. Plans: use (image), pull (image; ask again with pull_failed if it fails), debootstrap
    (image, note) or fail (message)."""
    if override and override == default_image:  # the debootstrap base by name: never the registry's
        if default_recipe == recipe:
            return Plan("use", {"image": default_image})
        registry_local, pull_failed = False, pull_failed or f"HYPERPLANE_BASE_IMAGE={override}"
        override = ""
        if host.os == "linux" and host.root and host.apt:
            return Plan("debootstrap", {"image": default_image, "note": (
                f"HYPERPLANE_BASE_IMAGE={default_image}: building it with debootstrap")})
    if override:
        if override_local:
            return Plan("use", {"image": override})
        if pull_failed is None:
            return Plan("pull", {"image": override})
        return Plan("fail", {"message": (
            f"HYPERPLANE_BASE_IMAGE={override} could not be pulled ({pull_failed}). Fix: make its registry"
            " reachable (`docker login` if it is private), `docker load` the image, or unset HYPERPLANE_BASE_IMAGE"
            f" to use {registry_image} or build {default_image} with debootstrap")})
    if registry_local:
        return Plan("use", {"image": registry_image})
    if default_recipe == recipe:
        return Plan("use", {"image": default_image})
    if pull_failed is None:
        return Plan("pull", {"image": registry_image})
    if host.os == "linux" and host.root and host.apt:
        note = f"cannot pull {registry_image} ({pull_failed}): building {default_image} with debootstrap instead"
        if default_recipe not in ("absent", recipe):
            note += f" ({default_image} here was made by base recipe {default_recipe or 1}, not {recipe})"
        return Plan("debootstrap", {"image": default_image, "note": note})
    if host.os == "linux":
        fallback = "building the base from Debian packages with debootstrap instead needs root"
        fallback += "" if host.apt else " on Debian or Ubuntu"
        rerun = ", or run scripts/bootstrap once as root" if host.apt else ""
    else:
        fallback = "building the base from Debian packages with debootstrap instead runs only on Debian/Ubuntu"
        rerun = ""
    return Plan("fail", {"message": (
        f"cannot pull {registry_image} ({pull_failed}), and {fallback}. Fix: make Docker Hub reachable (a proxy"
        " in Docker's settings, `docker login` where pulls are rate limited), `docker load` the image, or set"
        " HYPERPLANE_BASE_IMAGE to a Debian bookworm image with python3 from a registry you can reach"
        f"{rerun}")})


def pull(image: str, answer_timeout: float, total_timeout: float = 3600.0,
         command: Sequence[str] = ("docker",)) -> tuple[bool, str]:
    """`docker pull image`, given up when no registry answers within answer_timeout seconds (an unreachable
    registry can otherwise hang for minutes); once one answers the layers get total_timeout. Returns
    (pulled, the last line docker printed or why it was given up)."""
    try:
        process = subprocess.Popen([*command, "pull", image], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", start_new_session=True)
    except OSError as error:
        return False, str(error)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    started, answered, last = time.monotonic(), False, ""
    while True:
        limit = total_timeout if answered else answer_timeout
        left = started + limit - time.monotonic()
        if left <= 0:
            try:
                os.killpg(process.pid, 9)  # docker and anything it started
            except OSError:
                process.kill()
            process.wait()
            return False, (f"no registry answered within {answer_timeout:.0f} s" if not answered
                           else f"not pulled within {total_timeout:.0f} s")
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            break
        if line.strip():
            last = line.strip()
        answered = answered or bool(PULL_ANSWERED.search(line))
    returncode = process.wait()
    return returncode == 0, last or f"docker pull exited with {returncode}"


# ---------- what a pytest command line needs ----------

_TOKEN = re.compile(r"\(|\)|[\w:+\-.\[\]\\/]+")
# pytest options that take a value as the next argument (the value is never a test path).
_VALUE_OPTIONS = frozenset({
    "-m", "-k", "-p", "-o", "-c", "-W", "--timeout", "--junitxml", "--junit-xml", "--basetemp", "--rootdir",
    "--deselect", "--ignore", "--ignore-glob", "--maxfail", "--durations", "--durations-min", "-n", "--tb",
    "--log-level", "--log-file", "--confcutdir", "--override-ini", "--color", "--capture", "--import-mode",
    "--pyargs", "--hypothesis-seed", "--hypothesis-profile", "-r", "--config-file", "--cache-dir",
})
NO_DOCKER_FOLDERS = ("tests/model", "tests/training", "tests/serving", "tests/setup")


if TYPE_CHECKING:
    Tree = tuple[Any, ...]  # ("or"|"and", left, right), ("not", inner) or ("name", marker)


def marker_expression(expression: str) -> Callable[[dict[str, bool]], bool]:
    """pytest's -m grammar (`not`, `and`, `or`, parentheses, marker names) as a function of the markers'
    truth values. Raises ValueError on anything else (keyword arguments included): callers then assume the
    worst."""
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise ValueError(f"cannot parse {expression!r}")
    if not tokens:
        return lambda markers: True  # `-m ""`: pytest selects everything
    position = 0

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"unexpected end of {expression!r}")
        position += 1
        return str(tokens[position - 1])

    def binary(operator: str, operand: Callable[[], Tree]) -> Tree:
        tree = operand()
        while position < len(tokens) and tokens[position] == operator:
            take()
            tree = (operator, tree, operand())
        return tree

    def parse_or() -> Tree:
        return binary("or", parse_and)

    def parse_and() -> Tree:
        return binary("and", parse_not)

    def parse_not() -> Tree:
        token = take()
        if token == "not":
            return ("not", parse_not())
        if token == "(":
            inner = parse_or()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            return inner
        if token in (")", "and", "or") or (position < len(tokens) and tokens[position] == "("):
            raise ValueError(f"cannot read {token!r} in {expression!r}")
        return ("name", token)

    tree = parse_or()
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r} in {expression!r}")

    def evaluate(node: Tree, markers: dict[str, bool]) -> bool:
        if node[0] == "name":
            return markers.get(node[1], False)
        if node[0] == "not":
            return not evaluate(node[1], markers)
        if node[0] == "and":
            return evaluate(node[1], markers) and evaluate(node[2], markers)
        return evaluate(node[1], markers) or evaluate(node[2], markers)

    return lambda markers: evaluate(tree, markers)


def _may_select(evaluate: Callable[[dict[str, bool]], bool], names: Sequence[str], fixed: dict[str, bool]) -> bool:
    """Whether some test whose markers agree with `fixed` may be selected: every other marker name in the
    expression is tried both ways."""
    free = [n for n in names if n not in fixed][:12]
    return any(evaluate({**fixed, **{name: values[i] for i, name in enumerate(free)}})
               for values in itertools.product((False, True), repeat=len(free)))


def pytest_needs(args: Sequence[str], root: pathlib.Path = ROOT) -> dict[str, bool]:
    """What `pytest args` needs besides .venv: docker (the Docker engine, base image and both images: tests
    marked docker, which the sdk tests also are) and sdk (.venv-sdk2/3: tests marked sdk). Errs on the side
    of needing: anything it cannot read needs both."""
    expressions: list[str] = []
    paths: list[str] = []
    arguments = list(args)
    while arguments:
        arg = arguments.pop(0)
        if arg == "--":
            paths += arguments
            break
        if arg.startswith("-m") and arg != "-m":
            expressions.append(arg[2:].lstrip("="))
        elif arg in _VALUE_OPTIONS:
            value = arguments.pop(0) if arguments else ""
            if arg == "-m":
                expressions.append(value)
        elif arg.startswith("-"):
            continue
        else:
            paths.append(arg)
    needs = {"docker": True, "sdk": True}
    if expressions:
        try:
            evaluate = marker_expression(expressions[-1])  # pytest uses the last -m
        except ValueError:
            return needs
        names = sorted(set(re.findall(r"[\w:+\-.\[\]\\/]+", expressions[-1])) - {"not", "and", "or"})
        names = sorted(set(names) | {"docker", "sdk"})
        needs["docker"] = (_may_select(evaluate, names, {"docker": True, "sdk": False})
                           or _may_select(evaluate, names, {"docker": True, "sdk": True}))
        needs["sdk"] = (_may_select(evaluate, names, {"sdk": True, "docker": False})
                        or _may_select(evaluate, names, {"sdk": True, "docker": True}))
    if paths:
        resolved_root = root.resolve()
        safe = [(resolved_root / folder) for folder in NO_DOCKER_FOLDERS]
        in_safe = True
        for path in paths:
            target = (root / path.split("::", 1)[0]).resolve()
            if not any(target == folder or folder in target.parents for folder in safe):
                in_safe = False
        if in_safe:
            needs = {"docker": False, "sdk": False}
    return needs


# ---------- gathering the facts ----------

PROBE = """
import json, os, platform, sys, sysconfig
try:
    import ensurepip, venv
    has_venv = True
except Exception:
    has_venv = False
include = sysconfig.get_paths().get("include") or ""
print(json.dumps({"executable": sys.executable, "version": list(sys.version_info[:3]), "venv": has_venv,
                  "headers": os.path.isfile(os.path.join(include, "Python.h")), "machine": platform.machine(),
                  "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED"))}))
"""


def probe(command: str) -> Interpreter | None:
    try:
        result = subprocess.run([command, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        major, minor, micro = (int(v) for v in facts["version"])
        return Interpreter(command=command, executable=str(facts["executable"] or command),
                           version=(major, minor, micro), venv=bool(facts["venv"]), headers=bool(facts["headers"]),
                           arch=normalize_arch(str(facts["machine"])), free_threaded=bool(facts["free_threaded"]))
    except (OSError, ValueError, IndexError, KeyError, TypeError, subprocess.TimeoutExpired):
        return None


def interpreters_on_path(path: str) -> list[Interpreter]:
    """Every python3.X (and python3) on PATH, in PATH order, each real interpreter once (a pyenv shim and
    the interpreter behind it are one; a shim for a version pyenv has not selected gives nothing)."""
    found: list[Interpreter] = []
    commands: set[str] = set()
    executables: set[str] = set()
    for folder in path.split(os.pathsep):
        for name in PYTHON_NAMES:
            command = os.path.join(folder or ".", name)
            real = os.path.realpath(command)
            if real in commands or not (os.path.isfile(command) and os.access(command, os.X_OK)):
                continue
            commands.add(real)
            interpreter = probe(command)
            if interpreter is None or os.path.realpath(interpreter.executable) in executables:
                continue
            executables.add(os.path.realpath(interpreter.executable))
            found.append(interpreter)
    return found


def host_facts(need_compiler: bool = False) -> Host:
    uname = platform.uname()
    os_name = normalize_os(uname.system)
    compiler = True
    if need_compiler:
        compiler = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
        if os_name == "macos":  # /usr/bin/cc is a stub that offers to install the tools
            compiler = subprocess.run(["xcode-select", "-p"], capture_output=True, check=False).returncode == 0
    return Host(os=os_name, arch=normalize_arch(uname.machine), root=os.geteuid() == 0,
                apt=bool(shutil.which("apt-get") and shutil.which("dpkg-query")), compiler=compiler)


def apt_python_versions() -> list[str] | None:
    """The python3.X (3.11..3.13) that apt has a candidate for; None when apt knows no packages at all."""
    names = [f"python{major}.{minor}" for major, minor in SUPPORTED_PYTHONS]
    try:
        output = subprocess.run(["apt-cache", "policy", "python3", *names], capture_output=True, text=True,
                                timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    candidates = dict(re.findall(r"^(\S+):\n(?:\s+Installed:.*\n)?\s+Candidate: (\S+)", output, re.M))
    if candidates.get("python3", "(none)") == "(none)":
        return None  # no package lists (apt-get update never ran)
    return [name[len("python"):] for name in names if candidates.get(name, "(none)") != "(none)"]


def _listing(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _pip_config(python: str) -> str:
    if not python:
        return ""
    try:
        return subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
                              check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---------- command line ----------


def _print(plan: Plan) -> int:
    print(plan.shell())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    python = commands.add_parser("python", help="the interpreter for a venv")
    python.add_argument("--for", dest="purpose", choices=("dev", "sdk"), default="sdk")
    wheel = commands.add_parser("torch-wheel", help="the CPU torch wheel: a local file, or how to download it")
    wheel.add_argument("--for", dest="purpose", choices=("venv", "image"), required=True)
    wheel.add_argument("--python", default="", help="venv: the venv's python (its tags and its pip's config)")
    wheel.add_argument("--arch", default="", help="image: the Docker engine's architecture")
    wheel.add_argument("--no-download", action="store_true")
    base = commands.add_parser("base-image", help="the base image: use, pull, debootstrap or fail")
    for option in ("--registry-image", "--default-image", "--default-recipe", "--recipe"):
        base.add_argument(option, required=True)
    base.add_argument("--registry-local", type=int, default=0)
    base.add_argument("--override", default="")
    base.add_argument("--override-local", type=int, default=0)
    base.add_argument("--pull-failed")
    pulling = commands.add_parser("pull", help="docker pull, given up when no registry answers in time")
    pulling.add_argument("image")
    pulling.add_argument("--answer-timeout", type=float, default=60.0)
    needs = commands.add_parser("pytest-needs", help="docker=0|1 sdk=0|1 for these pytest arguments")
    needs.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)

    version = torch_version((ROOT / "requirements" / "torch.txt").read_text())
    if options.command == "python":
        host = host_facts(need_compiler=options.purpose == "dev")
        override = os.environ.get("HYPERPLANE_PYTHON", "")
        if override:
            interpreter = probe(override)
            if interpreter is None:
                return _print(Plan("fail", {"message": f"HYPERPLANE_PYTHON={override} does not run as a Python"}))
            found = [interpreter]
        else:
            found = interpreters_on_path(os.environ.get("PATH", ""))
        apt_versions = None
        if host.apt and not any(_in_range(i) and i.venv for i in found):
            apt_versions = apt_python_versions()
        return _print(choose_python(host, found, options.purpose, version, apt_versions))
    if options.command == "torch-wheel":
        if options.purpose == "venv":
            interpreter = probe(options.python)
            if interpreter is None:
                return _print(Plan("fail", {"message": f"{options.python} does not run"}))
            target = WheelTarget(interpreter.tag, host_facts().os, interpreter.arch)
        else:
            target = WheelTarget(IMAGE_PYTHON_TAG, "linux", normalize_arch(options.arch))
        folders = [("TORCH_WHEEL_DIR", os.environ.get("TORCH_WHEEL_DIR", ""))]
        folders += [("pip's find-links", f) for f in pip_find_links("", os.environ.get("PIP_FIND_LINKS", ""))]
        index_url = os.environ.get("TORCH_CPU_INDEX_URL") or DEFAULT_TORCH_CPU_INDEX_URL
        cache = os.environ.get("HYPERPLANE_TORCH_CACHE") or str(ROOT / TORCH_CACHE)
        plan = torch_plan(version, target, folders, _listing, cache, index_url, cross=False, download=False)
        if plan.action != "use":  # only then ask pip for its configured find-links (a slow command)
            config = _pip_config(options.python)
            configured = [("pip's find-links", f) for f in pip_find_links(config, "")]
            folders += [f for f in configured if f not in folders]
            plan = torch_plan(version, target, folders, _listing, cache, index_url,
                              cross=options.purpose == "image", download=not options.no_download)
        return _print(plan)
    if options.command == "base-image":
        return _print(base_image_plan(
            host_facts(), registry_image=options.registry_image, registry_local=bool(options.registry_local),
            default_image=options.default_image, default_recipe=options.default_recipe, recipe=options.recipe,
            override=options.override, override_local=bool(options.override_local), pull_failed=options.pull_failed))
    if options.command == "pull":
        pulled, last = pull(options.image, options.answer_timeout)
        print(last)
        return 0 if pulled else 1
    args = list(options.args)
    if args[:1] == ["--"]:
        args = args[1:]
    need = pytest_needs(args)
    print(f"docker={int(need['docker'])} sdk={int(need['sdk'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
