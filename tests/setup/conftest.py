"""scripts/lib/setup_plan.py, imported by path (scripts/ is no package), and helpers that fake a machine:
executables on a private PATH, a minimal torch wheel, a PEP 503 index in a folder."""

from __future__ import annotations

import importlib.util
import pathlib
import stat
import sys
import types
import zipfile

import pytest

from tests.conftest import ROOT

PLANNER = ROOT / "scripts" / "lib" / "setup_plan.py"


def _load() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("setup_plan", PLANNER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["setup_plan"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


setup_plan = _load()


def executable(path: pathlib.Path, script: str) -> pathlib.Path:
    """A shell script at `path`, executable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_wheel(folder: pathlib.Path, name: str) -> pathlib.Path:
    """A tiny but valid wheel called `name` (pip reads its metadata, never its code)."""
    distribution, version = name.split("-")[:2]
    info = f"{distribution}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def file_index(root: pathlib.Path, wheels: list[pathlib.Path]) -> str:
    """A PEP 503 simple index made of a folder (what --index-url file://... reads), listing `wheels`."""
    project = root / "torch"
    project.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="{w.as_uri()}">{w.name}</a>\n' for w in wheels)
    (project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return root.as_uri()


@pytest.fixture
def fake_bin(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder
