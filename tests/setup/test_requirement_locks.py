"""The hash locks of the image requirement sets (requirements/locked/, written by scripts/lock-requirements; docs/
reliability.md, "Locked dependencies"): each lock matches its pins exactly (a stale lock fails here, with no
network), the Dockerfiles install from the locks only and with --require-hashes, and the lock script's logic on
a fake index."""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import re
import sys
import types
import zipfile

import pytest
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
LOCKED = REQUIREMENTS / "locked"
SETS = ("serve", "inference", "torch", "train")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def _load() -> types.ModuleType:
    path = ROOT / "scripts" / "lib" / "lock_requirements.py"
    spec = importlib.util.spec_from_file_location("lock_requirements", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_requirements"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lock_requirements = _load()


def _pins(path: pathlib.Path) -> tuple[dict[str, str], list[str]]:
    """{normalised name: version} of the `==` pins of a requirement file, and its `-r` includes."""
    pins: dict[str, str] = {}
    includes = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text.startswith("-r "):
            includes.append(text[3:].strip())
        elif text:
            match = PIN.match(text)
            assert match, f"{path.name}: '{text}' is not an exact pin"
            pins[canonicalize_name(match[1])] = match[2]
    return pins, includes


def _lock(path: pathlib.Path) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """{normalised name: (version, its --hash options)} of a lock file, and its `-r` includes."""
    text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines joined, as pip does
    entries: dict[str, tuple[str, list[str]]] = {}
    includes = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "-r":
            includes.append(words[1])
            continue
        match = PIN.match(words[0])
        assert match, f"{path.name}: '{words[0]}' is not an exact pin"
        key = canonicalize_name(match[1])
        assert key not in entries, f"{path.name}: {key} twice"
        entries[key] = (match[2], words[1:])
    return entries, includes


@pytest.mark.parametrize("name", SETS)
def test_every_pin_is_locked_with_hashes_and_nothing_else(name: str) -> None:
    """requirements/locked/NAME.txt has exactly the pins of requirements/NAME.txt, same versions, each with at
    least one sha256, and the same `-r` includes. Fails after a pin changes until scripts/lock-requirements
    has been run."""
    pins, includes = _pins(REQUIREMENTS / f"{name}.txt")
    entries, locked_includes = _lock(LOCKED / f"{name}.txt")
    fix = "run scripts/lock-requirements"
    assert {k: v for k, (v, _) in entries.items()} == pins, f"requirements/locked/{name}.txt is stale: {fix}"
    assert locked_includes == includes, f"requirements/locked/{name}.txt is stale: {fix}"
    for key, (_, options) in entries.items():
        assert options, f"{key} has no --hash in requirements/locked/{name}.txt"
        assert all(HASH.match(option) for option in options), (key, options)


def test_the_cuda_lock_is_for_the_pinned_torch() -> None:
    """torch-cuda.txt (PyPI's CUDA torch's runtime packages) was resolved for the torch of torch.txt, hashes
    every entry, and repeats no pin of the builder stage's sets (those come from their own locks)."""
    torch = _pins(REQUIREMENTS / "torch.txt")[0]["torch"]
    text = (LOCKED / "torch-cuda.txt").read_text()
    assert f"torch-{torch}-cp311-cp311-manylinux_2_28_x86_64.whl" in text, "stale: run scripts/lock-requirements"
    entries, includes = _lock(LOCKED / "torch-cuda.txt")
    assert includes == [] and entries
    builder = {key for name in ("serve", "inference", "torch") for key in _pins(REQUIREMENTS / f"{name}.txt")[0]}
    assert builder.isdisjoint(entries)
    for key, (_, options) in entries.items():
        assert options and all(HASH.match(option) for option in options), key


def test_recorded_wheels_are_in_the_locks() -> None:
    """Each wheel of wheels-not-on-pypi.sha256 (the CPU torch wheel) is in the entry of the pin it matches."""
    recorded = lock_requirements.read_not_on_pypi(LOCKED / "wheels-not-on-pypi.sha256")
    assert any(filename.startswith("torch-") for filename, _ in recorded)
    locks = {name: _lock(LOCKED / f"{name}.txt")[0] for name in SETS}
    for filename, sha in recorded:
        holders = [name for name, entries in locks.items() for key, (version, options) in entries.items()
                   if lock_requirements.file_matches(filename, lock_requirements.Pin(key, version))]
        assert holders, f"{filename} matches no pin"
        for name in holders:
            key = canonicalize_name(filename.split("-")[0])
            assert f"--hash=sha256:{sha}" in locks[name][key][1], (name, filename)


def _pip_commands(dockerfile: pathlib.Path) -> list[str]:
    """Each `pip ...` command of the RUN lines (continuations joined), up to the next && or ;."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [m.strip() for m in re.findall(r"\bpip (?:install|download)\b[^;&|\n]*", text)]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.train", "Dockerfile.serve"])
def test_the_dockerfiles_install_from_the_locks_with_hashes(dockerfile: str) -> None:
    """Every pip install has --require-hashes, reads a lock and takes wheels only or builds without isolation,
    except the project's own code (/src, --no-build-isolation --no-deps: no download). No unlocked requirement
    file is copied in."""
    path = ROOT / dockerfile
    commands = _pip_commands(path)
    assert len(commands) >= 4
    for command in commands:
        if command.endswith(" /src"):
            assert "--no-deps" in command and "--no-build-isolation" in command, command
            continue
        assert "--require-hashes" in command, command
        # Else pip takes the (locked) sdist when a wheel's hash does not match, and builds it with unpinned tools.
        assert "--only-binary=:all:" in command or "--no-build-isolation" in command, command
        assert re.search(r"-r /tmp/lock/\S+\.txt", command), command
    copies = [line for line in path.read_text().splitlines() if line.startswith("COPY requirements/")]
    assert copies and all(re.fullmatch(r"COPY (requirements/locked/\S+\.txt )+/tmp/lock/", c) for c in copies)


# ---------- scripts/lib/lock_requirements.py on a fake index ----------

def _file(filename: str, sha: str = "") -> object:
    return lock_requirements.File(filename, sha or hashlib.sha256(filename.encode()).hexdigest())


@pytest.mark.parametrize(("filename", "pin", "matches"), [
    ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl", ("torch", "2.13.0"), True),
    ("torch-2.13.0-cp311-cp311-win_amd64.whl", ("torch", "2.13.0"), True),
    ("torch-2.13.1-cp311-cp311-win_amd64.whl", ("torch", "2.13.0"), False),
    ("sagemaker_training-5.1.4.tar.gz", ("sagemaker-training", "5.1.4"), True),
    ("zope_event-6.2-py3-none-any.whl", ("zope.event", "6.2"), True),
    ("PyNaCl-1.6.2.tar.gz", ("pynacl", "1.6.2"), True),
    ("six-1.17.0-py2.py3-none-any.whl", ("six", "1.17"), True),
    ("six-1.17.0.tar.bz2", ("six", "1.17.0"), False),
    ("not a wheel.whl", ("six", "1.17.0"), False),
])
def test_file_matches(filename: str, pin: tuple[str, str], matches: bool) -> None:
    assert lock_requirements.file_matches(filename, lock_requirements.Pin(*pin)) is matches


def _fake_requirements(folder: pathlib.Path) -> pathlib.Path:
    (folder / "locked").mkdir(parents=True)
    (folder / "serve.txt").write_text("# comment\nsix==1.17.0  # why\n")
    (folder / "inference.txt").write_text("")
    (folder / "torch.txt").write_text("torch==2.13.0\n")
    (folder / "train.txt").write_text("-r serve.txt\nZope.Event==6.2\n")
    return folder


FAKE_INDEX = {
    "six": ["six-1.17.0-py2.py3-none-any.whl", "six-1.17.0.tar.gz", "six-1.16.0.tar.gz"],
    "torch": ["torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.13.0-cp311-cp311-win_amd64.whl",
              "torch-2.12.0-cp311-cp311-win_amd64.whl"],
    "zope-event": ["zope_event-6.2-py3-none-any.whl", "zope_event-6.2.tar.gz"],
    "nvidia-x": ["nvidia_x-1.0-py3-none-manylinux_2_28_x86_64.whl", "nvidia_x-2.0-py3-none-manylinux_2_28_x86_64.whl",
                 "nvidia_x-3.0-py3-none-win_amd64.whl"],
}
FAKE_REQUIRES = {
    "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl": [
        "six", "nvidia-x<3; platform_system == 'Linux'", "pyyaml; extra == 'pyyaml'", "w32; sys_platform == 'win32'"],
    "nvidia_x-2.0-py3-none-manylinux_2_28_x86_64.whl": [],
}


def _locker(folder: pathlib.Path) -> object:
    return lock_requirements.Locker(folder, files=lambda key: [_file(f) for f in FAKE_INDEX[key]],
                                    requires=lambda file: FAKE_REQUIRES[file.filename])


def _sha(filename: str) -> str:
    return hashlib.sha256(filename.encode()).hexdigest()


def test_locks_from_a_fake_index(tmp_path: pathlib.Path) -> None:
    folder = _fake_requirements(tmp_path / "requirements")
    locker = _locker(folder)
    assert sorted(locker.write()) == ["inference.txt", "serve.txt", "torch-cuda.txt", "torch.txt", "train.txt"]
    serve = (folder / "locked" / "serve.txt").read_text()
    assert "six==1.17.0 \\\n" in serve and _sha("six-1.17.0.tar.gz") in serve and _sha("six-1.16.0.tar.gz") not in serve
    train = _lock(folder / "locked" / "train.txt")
    assert train[1] == ["serve.txt"] and train[0]["zope-event"][0] == "6.2" and len(train[0]["zope-event"][1]) == 2
    torch = _lock(folder / "locked" / "torch.txt")[0]["torch"]
    assert len(torch[1]) == 2  # both 2.13.0 wheels, not 2.12.0's
    # The CUDA set: nvidia-x 2.0 (newest below 3 with a Linux x86_64 wheel), not six (pinned), pyyaml (an extra)
    # or w32 (Windows).
    cuda = _lock(folder / "locked" / "torch-cuda.txt")[0]
    assert {k: v for k, (v, _) in cuda.items()} == {"nvidia-x": "2.0"}
    assert locker.check() == [] and locker.write() == []
    (folder / "serve.txt").write_text("six==1.16.0\n")
    assert "serve.txt" in locker.check()


def test_add_wheel_records_a_wheel_pypi_lacks(tmp_path: pathlib.Path) -> None:
    folder = _fake_requirements(tmp_path / "requirements")
    locker = _locker(folder)
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch/__init__.py", "")
    sha = locker.add_wheel(wheel)
    assert sha == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert locker.add_wheel(wheel) == sha  # recorded once
    recorded = (folder / "locked" / "wheels-not-on-pypi.sha256").read_text()
    assert recorded == f"{sha}  {wheel.name}\n"
    locker.write()
    assert f"--hash=sha256:{sha}" in _lock(folder / "locked" / "torch.txt")[0]["torch"][1]
    other = tmp_path / "torch-2.14.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl"
    other.write_bytes(b"x")
    with pytest.raises(lock_requirements.LockError, match="matches no pin"):
        locker.add_wheel(other)


def test_only_exact_pins(tmp_path: pathlib.Path) -> None:
    folder = _fake_requirements(tmp_path / "requirements")
    (folder / "serve.txt").write_text("six>=1.16\n")
    with pytest.raises(lock_requirements.LockError, match=r"serve.txt:1: 'six>=1.16' is neither an exact pin"):
        _locker(folder).render()
