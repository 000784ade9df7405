"""What the images are, as opposed to what they do: sizes, no compiler (but the extension one compiled), no
pip in the serving image, and their supply chain: Debian's own CA bundle (nothing of the build machine's
trust store in any layer), Debian's security updates configured, the base's manifest (docs/reliability.md,
"Supply chain")."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import re
import subprocess
import tarfile

import pytest

from tests.container.docker import ROOT, docker

pytestmark = pytest.mark.docker


def _inspect(image: str) -> dict[str, object]:
    return dict(json.loads(docker("image", "inspect", image).stdout)[0])


def test_the_serving_image_is_smaller(train_image: str, serve_image: str) -> None:
    assert int(_inspect(serve_image)["Size"]) < int(_inspect(train_image)["Size"])  # type: ignore[call-overload]


@pytest.mark.parametrize("which", ["train", "serve"])
def test_no_compiler_but_the_compiled_kernel_and_bind_to_port_label(train_image: str, serve_image: str,
                                                                   which: str) -> None:
    image = train_image if which == "train" else serve_image
    # the one-row kernel (model/_rowmlp.c) was compiled in a build stage, and the compiler stayed there
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "command -v gcc cc c++ g++ clang || true; "
                   "python -c 'from model import _rowmlp; print(_rowmlp.mean.__name__)'").stdout
    assert found.strip() == "mean"
    labels = _inspect(image)["Config"]["Labels"]  # type: ignore[index]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_the_serving_image_has_no_pip(serve_image: str) -> None:
    result = docker("run", "--rm", "--network", "none", "--entrypoint", "python", serve_image, "-m", "pip",
                    "--version", check=False)
    assert result.returncode != 0
    assert "No module named pip" in result.stderr


# ---------- supply chain ----------

CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
# Where the builder stage of both Dockerfiles keeps the build machine's CA bundle for pip.
BUILD_CA_PATH = "hyperplane-build-ca"
STAGED_BUILD_CA = ROOT / "build" / "build-ca" / "ca.crt"      # what scripts/build-images staged
BUILD_MACHINE_BUNDLES = (pathlib.Path("/etc/ssl/certs/ca-certificates.crt"),
                         pathlib.Path("/etc/pki/tls/certs/ca-bundle.crt"), STAGED_BUILD_CA)
MANIFEST = "usr/share/hyperplane/base-manifest.txt"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


@pytest.fixture(params=["train", "serve"])
def image(request: pytest.FixtureRequest) -> str:
    """Each image in turn (built by the fixture of the same name)."""
    return str(request.getfixturevalue(f"{request.param}_image"))


def _certificates(pem: bytes) -> list[bytes]:
    """The base64 bodies of the PEM certificates in `pem`, without whitespace."""
    return [re.sub(rb"\s+", b"", body) for body in PEM.findall(pem)]


def _tree(image: str, *paths: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files (name -> content) and symbolic links (name -> target) below `paths` in `image`, names
    relative to / as tar writes them. Paths missing from the image are left out."""
    script = 'cd / && for p in "$@"; do [ -e "$p" ] && printf "%s\\n" "$p"; done | tar -c -f - -T -'
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script,
                             "sh", *paths], capture_output=True, timeout=300, check=True)
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        for member in archive:
            name = member.name.rstrip("/")
            if member.issym():
                links[name] = member.linkname
            elif member.isfile():
                files[name] = archive.extractfile(member).read()  # type: ignore[union-attr]
    return files, links


def _debian_bundle(files: dict[str, bytes]) -> bytes:
    """The bundle update-ca-certificates writes: the certificates /etc/ca-certificates.conf enables, in its
    order, each ending with a newline, then those of /usr/local/share/ca-certificates (sorted)."""
    bundle = b""
    for line in files["etc/ca-certificates.conf"].decode().splitlines():
        name = line.strip()
        path = f"usr/share/ca-certificates/{name}"
        if line and not name.startswith(("#", "!")) and path in files:
            bundle += files[path] if files[path].endswith(b"\n") else files[path] + b"\n"
    for path in sorted(p for p in files if p.startswith("usr/local/share/ca-certificates/") and p.endswith(".crt")):
        bundle += files[path] if files[path].endswith(b"\n") else files[path] + b"\n"
    return bundle


def test_the_ca_bundle_is_debians(image: str) -> None:
    """/etc/ssl/certs holds what the ca-certificates package makes of Debian's certificates: no added CA
    (the images built before this test copied the build machine's bundle, a TLS proxy's CA included)."""
    files, links = _tree(image, "etc/ca-certificates.conf", "etc/ssl/certs", "usr/share/ca-certificates",
                         "usr/local/share/ca-certificates")
    local = [p for p in files if p.startswith("usr/local/share/ca-certificates/")]
    assert local == [], "no locally added CA in an image"
    expected, actual = _debian_bundle(files), files[CA_BUNDLE]
    added = set(_certificates(actual)) - set(_certificates(expected))
    assert actual == expected, (f"{CA_BUNDLE} has {len(_certificates(actual))} certificates, {len(added)} of them "
                                f"not Debian's; Debian's bundle has {len(_certificates(expected))}")
    # Everything else in /etc/ssl/certs is a link (by name or by hash) to one of Debian's certificates.
    others = [p for p in files if p.startswith("etc/ssl/certs/") and p != CA_BUNDLE]
    assert others == []
    for name in (p for p in links if p.startswith("etc/ssl/certs/")):
        target = name
        for _ in range(5):
            if target not in links:
                break
            link = links[target]
            target = os.path.normpath(link.lstrip("/") if link.startswith("/") else f"{os.path.dirname(target)}/{link}")
        assert target.startswith("usr/share/ca-certificates/") and target in files, (name, target)


def _build_machine_extras(image: str) -> dict[bytes, str]:
    """Certificates the build machine trusts (its bundle, and the bundle scripts/build-images staged for
    the build) that are not Debian's: any CA in any version of the ca-certificates package, the image's
    or this machine's, is Debian's. Here: the intercepting proxy's CA. Base64 body -> a short name."""
    files, _ = _tree(image, "usr/share/ca-certificates")
    debian = {cert for content in files.values() for cert in _certificates(content)}
    host_debian = pathlib.Path("/usr/share/ca-certificates")
    if host_debian.is_dir():
        debian |= {cert for path in host_debian.rglob("*.crt") for cert in _certificates(path.read_bytes())}
    extras: dict[bytes, str] = {}
    for bundle in BUILD_MACHINE_BUNDLES:
        if bundle.is_file():
            for cert in _certificates(bundle.read_bytes()):
                if cert not in debian:
                    digest = hashlib.sha256(base64.b64decode(cert)).hexdigest()[:16]
                    extras.setdefault(cert, f"certificate sha256:{digest} from {bundle}")
    return extras


def _occurrences(image: str, needles: dict[bytes, str]) -> dict[str, set[str]]:
    """`docker save IMAGE` read as a stream: what (needles' values) occurs in which member of the archive
    (every layer tar, the image config, the manifest). Layers are uncompressed tars, so a file's bytes
    appear as they are."""
    overlap = max(map(len, needles)) - 1
    found: dict[str, set[str]] = {}
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                stream = archive.extractfile(member) if member.isfile() else None
                tail = b""
                while stream is not None and (chunk := stream.read(1 << 24)):
                    data = tail + chunk
                    for needle, what in needles.items():
                        if needle in data:
                            found.setdefault(what, set()).add(member.name)
                    tail = data[-overlap:]
    assert save.returncode == 0
    return found


def test_no_build_machine_ca_in_any_layer(image: str) -> None:
    """Not one layer of the image (the base's included) holds a certificate of the build machine that
    Debian does not ship, as PEM (any two of its 64-character lines) or DER, nor the builder stage's copy
    of the build CA bundle (checked by its path even where the build machine adds no certificate)."""
    needles = {BUILD_CA_PATH.encode(): f"the builder stage's /etc/{BUILD_CA_PATH}/ (name or reference)"}
    extras = _build_machine_extras(image)
    for cert, name in extras.items():
        needles[base64.b64decode(cert)] = f"{name} (DER)"
        for line in (cert[64:128], cert[128:192]):
            needles[line] = f"{name} (PEM)"
    assert _occurrences(image, needles) == {}, f"checked {len(extras)} certificates of the build machine"


def test_history_has_no_build_ca(image: str) -> None:
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    config = json.dumps(_inspect(image)["Config"])
    for text in (history, config):
        for word in (BUILD_CA_PATH, "build-ca", "PIP_CERT"):
            assert word not in text


def _apt_sources(files: dict[str, bytes]) -> set[tuple[str, str]]:
    """(URI, suite) of every `deb` source, one-line (sources.list) or deb822 (*.sources) form."""
    sources: set[tuple[str, str]] = set()
    for path, content in files.items():
        text = content.decode()
        if path.endswith(".list"):
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    sources.add((words[1].rstrip("/"), words[2]))
        elif path.endswith(".sources"):
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", paragraph, re.M))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    sources |= {(uri.rstrip("/"), suite) for uri in fields.get("URIs", "").split()
                                for suite in fields.get("Suites", "").split()}
    return sources


def test_security_updates_are_configured(image: str) -> None:
    files, _ = _tree(image, "etc/apt/sources.list", "etc/apt/sources.list.d")
    sources = _apt_sources(files)
    suites = {suite for _, suite in sources}
    assert {"bookworm", "bookworm-updates", "bookworm-security"} <= suites, sources
    assert any(uri.endswith("/debian-security") for uri, suite in sources if suite == "bookworm-security")


@pytest.mark.skipif(bool(os.environ.get("HYPERPLANE_BASE_IMAGE")), reason="a registry base has no manifest")
def test_base_manifest_and_labels(image: str) -> None:
    """The base records when it was built, from which Debian, and exactly its packages."""
    files, _ = _tree(image, MANIFEST)
    header, _, packages = files[MANIFEST].decode().partition("\n\n")
    fields = dict(line.split(": ", 1) for line in header.splitlines())
    dpkg = docker("run", "--rm", "--network", "none", "--entrypoint", "dpkg-query", image, "-W").stdout
    assert packages == dpkg and fields["packages"] == str(len(dpkg.splitlines()))
    labels = _inspect(image)["Config"]["Labels"]  # type: ignore[index]
    assert labels["org.hyperplane.base.created"] == fields["built"]
    assert labels["org.hyperplane.base.debian"] == fields["debian"].split()[0]
    assert labels["org.hyperplane.base.recipe"] == fields["recipe"].split()[0]
