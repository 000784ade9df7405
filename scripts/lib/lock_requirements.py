#!/usr/bin/env python3
"""Hash locks of the image requirement sets (run through scripts/lock-requirements, with .venv's Python: it
needs `packaging`).

For each of requirements/{serve,inference,torch,train}.txt it writes requirements/locked/<same name>: every
`name==version` pin with a `--hash=sha256:...` for every file PyPI has for that version (the wheels of all
platforms and the sdist, so that a build on another architecture verifies too: pip picks one file and
checks it), and `-r other.txt` kept as `-r other.txt` (the lock of that set, next to it). The Dockerfiles
install only from these locks, with `pip install --require-hashes`.

Files PyPI does not have (the CPU torch wheels of the PyTorch index, a CUDA build from TORCH_INDEX_URL) are
listed in requirements/locked/wheels-not-on-pypi.sha256 (`sha256sum` format) and added to the entry of the
pin they match. `--add-wheel PATH` records one there, after you have checked where it came from.

    scripts/lock-requirements                  # rewrite the locks from the pins (network: PyPI's JSON Simple API)
    scripts/lock-requirements --check          # exit 1 when a lock differs from what the pins give now
    scripts/lock-requirements --add-wheel PATH # record a wheel that is not on PyPI, then rewrite the locks
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import email.parser
import hashlib
import json
import os
import pathlib
import re
import ssl
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SETS = ("serve", "inference", "torch", "train")
LOCKED = "locked"
NOT_ON_PYPI = "wheels-not-on-pypi.sha256"
INDEX = os.environ.get("HYPERPLANE_PYPI_SIMPLE_URL", "https://pypi.org/simple/")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
INCLUDE = re.compile(r"^-r\s+(\S+)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# torch-cuda.txt: what PyPI's Linux x86_64 torch wheel (the CUDA build) needs on top of torch.txt, for the
# images' Python (Debian bookworm's 3.11, glibc 2.36).
CUDA = "torch-cuda.txt"
CUDA_WHEEL = "torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
CUDA_ENV = {"python_version": "3.11", "python_full_version": "3.11.2", "platform_system": "Linux",
            "sys_platform": "linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
CUDA_TAGS = frozenset([*cpython_tags((3, 11), platforms=_PLATFORMS),
                       *compatible_tags((3, 11), "cp311", platforms=_PLATFORMS)])


class LockError(Exception):
    """A problem the user must fix; the message says what and how."""


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str  # as written in the requirement file
    version: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


Line = Pin | str  # a pin, or the file name of an `-r` include


def read_requirements(path: pathlib.Path) -> list[Line]:
    """The pins and `-r` includes of a requirement file, in order. Anything else (a range, an option, a URL)
    is an error: an image set is exact pins only."""
    lines: list[Line] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if match := PIN.match(text):
            lines.append(Pin(match[1], match[2]))
        elif match := INCLUDE.match(text):
            lines.append(match[1])
        else:
            raise LockError(f"{path}:{number}: '{text}' is neither an exact pin (name==version) nor '-r FILE'")
    return lines


def file_matches(filename: str, pin: Pin) -> bool:
    """Whether `filename` (a wheel or an sdist) is a file of `pin`. A local version label matches the plain
    pin as it does for pip: torch-2.13.0+cpu-...whl is a file of torch==2.13.0."""
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return False
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return False
    return name == pin.key and SpecifierSet(f"=={pin.version}").contains(version, prereleases=True)


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    return ssl.create_default_context(cafile=cafile if os.path.isfile(cafile) else None)


@dataclasses.dataclass(frozen=True)
class File:
    filename: str
    sha256: str
    url: str = ""
    yanked: bool = False


def _get(url: str, accept: str = "*/*", byte_range: str = "") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept, **({"Range": byte_range} if byte_range else {})})
    try:
        with urllib.request.urlopen(request, timeout=60, context=_ssl_context()) as response:
            return bytes(response.read())
    except OSError as error:
        raise LockError(f"cannot read {url}: {error}") from error


def pypi_files(key: str) -> list[File]:
    """Every file of project `key` on the index that has a sha256 (PEP 691 JSON Simple API)."""
    data = json.loads(_get(INDEX.rstrip("/") + f"/{key}/", "application/vnd.pypi.simple.v1+json"))
    return [File(f["filename"], f["hashes"]["sha256"], f.get("url", ""), bool(f.get("yanked")))
            for f in data["files"] if "sha256" in f.get("hashes", {})]


def pypi_requires(file: File) -> list[str]:
    """The Requires-Dist lines of a wheel, from its PEP 658 metadata file (URL + .metadata): no download."""
    try:
        raw = _get(file.url + ".metadata")
    except LockError as error:
        if not isinstance(error.__cause__, urllib.error.HTTPError) or error.__cause__.code != 404:
            raise
        raw = _metadata_by_ranges(file)
    metadata = email.parser.BytesParser().parsebytes(raw, headersonly=True)
    return list(metadata.get_all("Requires-Dist") or [])


class _RemoteFile:
    """A file on a server that honours Range requests, read-only and seekable: enough for zipfile to read
    one member of a wheel of hundreds of MB with a few small requests."""

    def __init__(self, url: str) -> None:
        self.url, self.position = url, 0
        tail = urllib.request.Request(url, headers={"Range": "bytes=-1"})
        with urllib.request.urlopen(tail, timeout=60, context=_ssl_context()) as response:
            self.size = int(response.headers["Content-Range"].rpartition("/")[2])

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset + (0, self.position, self.size)[whence]
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self.position + n)
        if end <= self.position:
            return b""
        data = _get(self.url, byte_range=f"bytes={self.position}-{end - 1}")
        self.position += len(data)
        return data


def _metadata_by_ranges(file: File) -> bytes:
    """The METADATA of a wheel without a PEP 658 file, read with Range requests."""
    with zipfile.ZipFile(_RemoteFile(file.url)) as wheel:
        name = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return wheel.read(name)


def _fits(filename: str) -> bool:
    """Whether `filename` is a wheel that installs on CPython 3.11, Linux x86_64 (glibc 2.36)."""
    try:
        return filename.endswith(".whl") and bool(parse_wheel_filename(filename)[3] & CUDA_TAGS)
    except (InvalidWheelFilename, InvalidVersion):
        return False


def read_not_on_pypi(path: pathlib.Path) -> list[tuple[str, str]]:
    """(filename, sha256) of the wheels recorded with --add-wheel (`sha256sum` lines; # comments)."""
    if not path.is_file():
        return []
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        digest, _, filename = text.partition(" ")
        filename = filename.strip().lstrip("*")
        if not SHA256.match(digest) or not filename:
            raise LockError(f"{path}:{number}: expected '<sha256>  <filename>', got '{text}'")
        entries.append((filename, digest))
    return entries


@dataclasses.dataclass
class Locker:
    """Computes the locks of a requirements folder: `files` fetches a project's (filename, sha256) list."""
    requirements: pathlib.Path
    files: Callable[[str], list[File]] = pypi_files
    requires: Callable[[File], list[str]] = pypi_requires

    def sets(self) -> dict[str, list[Line]]:
        return {name: read_requirements(self.requirements / f"{name}.txt") for name in SETS}

    def render(self) -> dict[str, str]:
        """File name in requirements/locked/ -> its content."""
        sets = self.sets()
        pins = {line.key: line for lines in sets.values() for line in lines if isinstance(line, Pin)}
        for lines in sets.values():
            for line in lines:
                if isinstance(line, Pin) and line.version != pins[line.key].version:
                    raise LockError(f"{line.name} is pinned to both {line.version} and {pins[line.key].version}")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = dict(zip(pins, pool.map(self.files, pins), strict=True))
        extra = read_not_on_pypi(self.requirements / LOCKED / NOT_ON_PYPI)
        hashes: dict[str, list[tuple[str, str]]] = {}
        for key, pin in pins.items():
            mine = [(f.filename, f.sha256) for f in found[key] if file_matches(f.filename, pin)]
            if not mine:
                raise LockError(f"{pin.name}=={pin.version}: no file of that version on {INDEX}")
            hashes[key] = sorted(set(mine + [(f, h) for f, h in extra if file_matches(f, pin)]))
        unused = [f for f, _ in extra if not any(file_matches(f, pin) for pin in pins.values())]
        if unused:
            print(f"warning: {NOT_ON_PYPI} lists wheels no pin matches (remove them): {', '.join(unused)}",
                  file=sys.stderr)
        locks = {f"{name}.txt": self._render_set(name, lines, hashes) for name, lines in sets.items()}
        # The builder stage has installed these sets when torch-cuda.txt is installed (not train.txt).
        builder = {line.key for name in ("serve", "inference", "torch") for line in sets[name] if isinstance(line, Pin)}
        locks[CUDA] = self._render_cuda({key: pin for key, pin in pins.items() if key in builder}, found["torch"])
        return locks

    def _render_cuda(self, pins: dict[str, Pin], torch_files: list[File]) -> str:
        """torch-cuda.txt: the packages PyPI's Linux x86_64 torch wheel requires beyond the pins (CUDA
        runtime, triton), resolved from the wheels' metadata: the newest release that fits every requirement
        met on the way (no backtracking: a conflict is an error to resolve by hand)."""
        torch = pins["torch"]
        wheel_name = CUDA_WHEEL.format(version=torch.version)
        wheel = next((f for f in torch_files if f.filename == wheel_name), None)
        if wheel is None:
            raise LockError(f"no {wheel_name} on {INDEX}: the --cuda image's torch")
        chosen: dict[str, tuple[Pin, list[File], set[str]]] = {}
        todo = [(requirement, "torch") for requirement in self._applicable(wheel, set())]
        while todo:
            requirement, parent = todo.pop(0)
            key = canonicalize_name(requirement.name)
            if key in pins:
                if not requirement.specifier.contains(pins[key].version, prereleases=True):
                    raise LockError(f"{parent} requires {requirement}, but {pins[key].name} is pinned to "
                                    f"{pins[key].version}")
                continue
            if key not in chosen:
                files = self.files(key)
                pin, wheel = self._newest(key, requirement, files)
                chosen[key] = (pin, [f for f in files if file_matches(f.filename, pin)], set())
                todo += [(r, pin.name) for r in self._applicable(wheel, set())]
            pin, files, extras = chosen[key]
            if not requirement.specifier.contains(pin.version, prereleases=True):
                raise LockError(f"{parent} requires {requirement}, but {pin.name} {pin.version} was chosen")
            if requirement.extras - extras:
                extras |= requirement.extras
                wheel = next(f for f in files if _fits(f.filename))
                todo += [(r, pin.name) for r in self._applicable(wheel, extras)]
        out = ["# Generated by scripts/lock-requirements: do not edit, rerun it. The packages that PyPI's",
               f"# {wheel_name} (the CUDA build, scripts/build-images --cuda)",
               "# requires beyond the pins of serve.txt, inference.txt and torch.txt (CUDA runtime, triton),",
               "# resolved from the wheels' metadata for the images' Python (3.11, Linux x86_64): the newest",
               "# version each requirement allows. Every file of each version, as in the other locks."]
        for name in sorted(chosen):
            pin, files, _ = chosen[name]
            digests = list(dict.fromkeys(f.sha256 for f in sorted(files, key=lambda f: f.filename)))
            out.append(f"{pin.name}=={pin.version} \\")
            out.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(digests) - 1 else "")
                       for i, h in enumerate(digests))
        return "\n".join(out) + "\n"

    def _applicable(self, wheel: File, extras: set[str]) -> list[Requirement]:
        """The requirements of `wheel` that apply on CUDA_ENV with these extras."""
        applicable = []
        for line in self.requires(wheel):
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({**CUDA_ENV, "extra": extra}) for extra in extras | {""}):
                applicable.append(requirement)
        return applicable

    @staticmethod
    def _newest(key: str, requirement: Requirement, files: list[File]) -> tuple[Pin, File]:
        """The newest version that `requirement` allows with a wheel for CUDA_ENV, and that wheel."""
        best: tuple[Version, File] | None = None
        for file in files:
            if file.yanked or not _fits(file.filename):
                continue
            version = parse_wheel_filename(file.filename)[1]
            if requirement.specifier.contains(version) and (best is None or version > best[0]):
                best = (version, file)
        if best is None:
            raise LockError(f"no wheel on {INDEX} for {requirement} on CPython 3.11 Linux x86_64")
        return Pin(str(key), str(best[0])), best[1]

    @staticmethod
    def _render_set(name: str, lines: list[Line], hashes: dict[str, list[tuple[str, str]]]) -> str:
        out = [f"# Generated by scripts/lock-requirements from requirements/{name}.txt: do not edit, rerun it.",
               "# Every file of each pinned version on PyPI (all platforms' wheels and the sdist) and the wheels",
               f"# of {NOT_ON_PYPI} that match; pip install --require-hashes accepts nothing else."]
        for line in lines:
            if isinstance(line, str):
                out.append(f"-r {line}")
                continue
            digests = list(dict.fromkeys(h for _, h in hashes[line.key]))
            out.append(f"{line.name}=={line.version} \\")
            out.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(digests) - 1 else "")
                       for i, h in enumerate(digests))
        return "\n".join(out) + "\n"

    def write(self) -> list[str]:
        """Writes the locks; returns the names of those that changed."""
        folder = self.requirements / LOCKED
        folder.mkdir(exist_ok=True)
        changed = []
        for name, text in self.render().items():
            path = folder / name
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                changed.append(name)
        return changed

    def check(self) -> list[str]:
        """The names of the locks that differ from what the pins give now."""
        folder = self.requirements / LOCKED
        return [name for name, text in self.render().items()
                if not (folder / name).is_file() or (folder / name).read_text() != text]

    def add_wheel(self, wheel: pathlib.Path) -> str:
        """Records `wheel` in wheels-not-on-pypi.sha256 (unless PyPI has it); returns its sha256."""
        if not wheel.is_file():
            raise LockError(f"{wheel}: no such file")
        try:
            name, version, _, _ = parse_wheel_filename(wheel.name)
        except (InvalidWheelFilename, InvalidVersion) as error:
            raise LockError(f"{wheel.name} is not a wheel's file name ({error})") from error
        pins = [line for lines in self.sets().values() for line in lines
                if isinstance(line, Pin) and file_matches(wheel.name, line)]
        if not pins:
            raise LockError(f"{wheel.name} ({name} {version}) matches no pin in requirements/"
                            f"{{{','.join(SETS)}}}.txt: pin that version first")
        digest = hashlib.sha256()
        with wheel.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        sha = digest.hexdigest()
        path = self.requirements / LOCKED / NOT_ON_PYPI
        entries = read_not_on_pypi(path)
        if (wheel.name, sha) not in entries:
            path.parent.mkdir(exist_ok=True)
            with path.open("a") as f:
                f.write(f"{sha}  {wheel.name}\n")
        return sha


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lock-requirements", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 when a lock is out of date; write nothing")
    group.add_argument("--add-wheel", type=pathlib.Path, metavar="PATH",
                       help=f"record this wheel's sha256 in requirements/{LOCKED}/{NOT_ON_PYPI}, then lock")
    args = parser.parse_args(argv)
    locker = Locker(ROOT / "requirements")
    try:
        if args.check:
            stale = locker.check()
            for name in stale:
                print(f"requirements/{LOCKED}/{name} is out of date: run scripts/lock-requirements", file=sys.stderr)
            return 1 if stale else 0
        if args.add_wheel:
            sha = locker.add_wheel(args.add_wheel)
            print(f"{args.add_wheel.name}: sha256 {sha} in requirements/{LOCKED}/{NOT_ON_PYPI}")
        changed = locker.write()
    except LockError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"requirements/{LOCKED}/: " + (", ".join(changed) + " rewritten" if changed else "all up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
