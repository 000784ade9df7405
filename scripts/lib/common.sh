# shellcheck shell=bash
# Helpers sourced by scripts/*: timed steps, apt installs, the Docker engine, the base image and venvs.
# Each ensure_* function is idempotent: it checks first and only does work when something is missing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEFAULT_BASE_IMAGE=hyperplane/python:3.11-bookworm
# HYPERPLANE_BASE_IMAGE (e.g. python:3.11-slim-bookworm where a registry is reachable) skips debootstrap.
BASE_IMAGE=${HYPERPLANE_BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
# Version of the debootstrap recipe (build_base_rootfs, import_base_image). The base image carries it
# as a label and build/base-rootfs/.complete holds it: a base made by another recipe is rebuilt, never
# reused. Bump it with every change to what those two functions put into the image.
BASE_RECIPE=2
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_MANIFEST=usr/share/hyperplane/base-manifest.txt # inside the rootfs: build date, versions, packages
DOCKERD_LOG=/var/log/hyperplane-dockerd.log

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# step NAME COMMAND...: run COMMAND and print "NAME: 1.2s" when it succeeds.
step() {
  local name=$1 t0=$EPOCHREALTIME # bash >= 5: wall clock with microseconds
  shift
  "$@"
  log "$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" 'BEGIN { printf "%-12s %6.1fs", n ":", b - a }')"
}

is_debian_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; }

# apt_ensure PKG...: install the packages that are missing (Debian-like machines, as root).
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  is_debian_root || die "missing packages: ${missing[*]} (install them, or run as root on Debian/Ubuntu)"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Docker engine reachable through `docker info`, plus docker-compose (SDK local mode runs it).
ensure_docker() {
  if ! docker info >/dev/null 2>&1; then
    is_debian_root || die "cannot reach a Docker engine ('docker info' fails). Install Docker
  (Docker Desktop, or your distribution's docker.io), start it, make sure 'docker info' works
  for this user, then run this script again."
    apt_ensure docker.io
    # A dockerd may already be starting (another script, or systemd): only start one if none runs.
    if ! pgrep -x dockerd >/dev/null; then
      log "starting dockerd (log: $DOCKERD_LOG)"
      # setsid + nohup: dockerd outlives this script and its terminal; others need it afterwards.
      setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local i
    for i in $(seq 60); do
      docker info >/dev/null 2>&1 && break
      [ "$i" = 60 ] && die "dockerd did not answer within 60 s; see the end of $DOCKERD_LOG:
$(tail -n 20 "$DOCKERD_LOG" 2>/dev/null)"
      sleep 1
    done
  fi
  # SDK local mode tries `docker compose` (v2 plugin) first, then docker-compose (v1, Debian's).
  if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    apt_ensure docker-compose
  fi
}

# Base image of both Dockerfiles. Without a registry it is built from Debian packages with debootstrap.
# An image or rootfs made by another recipe (no or another org.hyperplane.base.recipe label, another
# .complete) is rebuilt, not reused: CI machines keep both from run to run.
ensure_base_image() {
  if [ "$BASE_IMAGE" != "$DEFAULT_BASE_IMAGE" ]; then
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || docker pull "$BASE_IMAGE"
    return
  fi
  local rootfs=$ROOT/build/base-rootfs have
  have=$(docker image inspect -f '{{index .Config.Labels "org.hyperplane.base.recipe"}}' "$BASE_IMAGE" 2>/dev/null) ||
    have=absent
  [ "$have" = "$BASE_RECIPE" ] && return 0
  [ "$have" = absent ] || log "$BASE_IMAGE was made by base recipe ${have:-1}, not $BASE_RECIPE: rebuilding it"
  # The rootfs is kept (build/ is ignored): re-importing it after a `docker rmi` takes seconds.
  [ "$(cat "$rootfs/.complete" 2>/dev/null)" = "recipe $BASE_RECIPE" ] || build_base_rootfs "$rootfs"
  import_base_image "$rootfs" "$DEFAULT_BASE_IMAGE"
}

# build_base_rootfs DIR: Debian bookworm (minbase) with python3, python3-venv and ca-certificates in DIR,
# Debian's security and point-release updates applied, Debian's own CA bundle (nothing of this
# machine's trust store) and the manifest $BASE_MANIFEST. Log: build/debootstrap.log.
build_base_rootfs() {
  local rootfs=${1:?} cache=$ROOT/build/debootstrap-cache log=$ROOT/build/debootstrap.log rc=0 built
  case $rootfs in /*/*) ;; *) die "build_base_rootfs: '$rootfs' is not a folder below /" ;; esac
  apt_ensure debootstrap
  if mountpoint -q "$rootfs/proc"; then umount "$rootfs/proc"; fi # left mounted by a killed run
  rm -rf --one-file-system "$rootfs" # never into /proc or /sys left mounted by a failed run
  mkdir -p "$cache" # debootstrap keeps the downloaded .debs here for the next run
  # No python3-pip: `python3 -m venv` seeds pip from python3-venv's bundled wheel, and a system
  # pip would put pip back into the serving image.
  debootstrap --variant=minbase --cache-dir="$cache" \
    --include=python3,python3-venv,ca-certificates "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$log" 2>&1 || die "debootstrap failed, see build/debootstrap.log"
  # /etc/ssl/certs/ca-certificates.crt stays the bundle the ca-certificates package generated from
  # Debian's certificates: a CA this machine trusts (here an intercepting proxy's) must not be trusted
  # by every container. pip inside `docker build` gets this machine's bundle another way, for the
  # build only (stage_build_ca and the builder stage of the Dockerfiles).
  # Debian's sources as Debian's own images have them: the release, its point-release updates and
  # the security archive (deb822 form; plain http, apt checks the signatures).
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # debootstrap installs the release as published; the fixes published since are applied here.
  # /proc for the maintainer scripts, unmounted whatever apt does. --force-confold: never a prompt.
  mount -t proc proc "$rootfs/proc"
  chroot "$rootfs" env LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive sh -c 'apt-get -o Acquire::Languages=none update &&
    apt-get -y --with-new-pkgs -o Dpkg::Options::=--force-confold upgrade' </dev/null >>"$log" 2>&1 || rc=$?
  umount "$rootfs/proc"
  [ "$rc" = 0 ] || die "apt-get upgrade inside the rootfs failed, see build/debootstrap.log"
  # debootstrap copies this machine's resolv.conf and hostname in; docker mounts its own over both.
  : >"$rootfs/etc/resolv.conf"
  echo localhost >"$rootfs/etc/hostname"
  # Both images carry this rootfs: drop the .debs (debootstrap copies them in as well), apt lists,
  # docs, man pages and translations.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  # What the base is and when it was made: "key: value" lines, a blank line, `dpkg-query -W` verbatim.
  built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  mkdir -p "$(dirname "$rootfs/$BASE_MANIFEST")"
  {
    echo "recipe: $BASE_RECIPE (scripts/lib/common.sh build_base_rootfs)"
    echo "built: $built"
    echo "debian: $(cat "$rootfs/etc/debian_version") ($DEBIAN_SUITE)"
    echo "sources: $DEBIAN_MIRROR $DEBIAN_SUITE $DEBIAN_SUITE-updates, $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security"
    echo "packages: $(chroot "$rootfs" dpkg-query -W | wc -l)"
    echo
    chroot "$rootfs" dpkg-query -W
  } >"$rootfs/$BASE_MANIFEST"
  echo "recipe $BASE_RECIPE" >"$rootfs/.complete"
}

# import_base_image DIR TAG: DIR (made by build_base_rootfs) as image TAG, labelled with the recipe,
# the build date and the Debian version of its manifest (both final images inherit the labels).
import_base_image() {
  local rootfs=$1 tag=$2 built debian
  built=$(sed -n 's/^built: //p' "$rootfs/$BASE_MANIFEST")
  debian=$(sed -n 's/^debian: \([^ ]*\).*/\1/p' "$rootfs/$BASE_MANIFEST")
  [ -n "$built" ] && [ -n "$debian" ] || die "no build date or Debian version in $rootfs/$BASE_MANIFEST"
  # An imported image has no environment at all: without PATH, Dockerfile lines such as
  # ENV PATH=/opt/venv/bin:$PATH would drop the system directories.
  tar -C "$rootfs" --exclude=./.complete -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
    -c "LABEL org.hyperplane.base.recipe=$BASE_RECIPE org.hyperplane.base.created=$built" \
    -c "LABEL org.hyperplane.base.debian=$debian" \
    - "$tag" >/dev/null
}

# stage_build_ca: build/build-ca/ca.crt, the CA bundle pip trusts inside `docker build` (the builder
# stage of the Dockerfiles; no final image contains it). HYPERPLANE_BUILD_CA when set, else this
# machine's bundle, which may hold the CA of a TLS-intercepting proxy (it does here); without one, the
# base image's own bundle, so that the Dockerfiles' COPY always finds a file.
stage_build_ca() {
  local dst=$ROOT/build/build-ca/ca.crt src=
  mkdir -p "$(dirname "$dst")"
  if [ -n "${HYPERPLANE_BUILD_CA:-}" ]; then
    [ -s "$HYPERPLANE_BUILD_CA" ] || die "HYPERPLANE_BUILD_CA=$HYPERPLANE_BUILD_CA is not a CA bundle file"
    src=$HYPERPLANE_BUILD_CA
  elif [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    src=/etc/ssl/certs/ca-certificates.crt # Debian, Ubuntu, Alpine, Arch
  elif [ -s /etc/pki/tls/certs/ca-bundle.crt ]; then
    src=/etc/pki/tls/certs/ca-bundle.crt # Fedora, RHEL
  else
    src=$dst.base
    docker run --rm --network none --entrypoint cat "$BASE_IMAGE" /etc/ssl/certs/ca-certificates.crt >"$src"
  fi
  # Rewritten only when it changed, so that the builder layers stay cached.
  cmp -s "$src" "$dst" || cp "$src" "$dst"
  rm -f "$dst.base"
}

# venv_current DIR FILE...: true when DIR's python works and DIR was installed from exactly these FILEs.
venv_current() {
  local dir=$1
  shift
  [ "$(cat "$dir/.hyperplane-stamp" 2>/dev/null)" = "$(stamp "$@")" ] && "$dir/bin/python" -c '' 2>/dev/null
}
stamp() { (cd "$ROOT" && sha256sum "$@") | sha256sum | cut -d' ' -f1; }

# new_venv DIR: an empty Python 3.11 venv at DIR (replacing what is there).
new_venv() {
  if ! python3.11 -c 'import ensurepip' 2>/dev/null; then
    apt_ensure python3.11 python3.11-venv # Debian splits venv support out of the interpreter
  fi
  log "creating ${1#"$ROOT"/}"
  rm -rf "$1"
  python3.11 -m venv "$1"
}

# pip_install VENV ARGS...: quiet pip install into VENV. The filter drops a harmless warning
# that this machine's pip config (a missing local index) prints once per package.
pip_install() {
  local venv=$1
  shift
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# torch_wheel: path of the CPU torch wheel pinned in requirements/torch.txt, looked up in
# $TORCH_WHEEL_DIR, then in pip's find-links folders (`pip config list`, e.g. /opt/wheels here).
torch_wheel() {
  local version dirs d w
  version=$(sed -n 's/^torch==//p' "$ROOT/requirements/torch.txt")
  dirs="${TORCH_WHEEL_DIR:-} $(python3 -m pip config list 2>/dev/null |
    sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p" | sed 's#file://##g')"
  for d in $dirs; do
    for w in "$d"/torch-"$version"+cpu-cp311-cp311-*linux*_x86_64.whl; do
      [ -f "$w" ] && { echo "$w"; return 0; }
    done
  done
  die "no torch-$version+cpu cp311 wheel in TORCH_WHEEL_DIR or pip's find-links (${dirs// /}). Put it in a folder and set
  TORCH_WHEEL_DIR=<folder> (PyPI's Linux torch is the multi-GB CUDA build, so it is never used here)."
}
