# shellcheck shell=bash
# Helpers sourced by scripts/*: timed steps, apt installs, the Docker engine, the base image and venvs.
# Each ensure_* function is idempotent: it checks first and only does work when something is missing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEFAULT_BASE_IMAGE=hyperplane/python:3.11-bookworm
# HYPERPLANE_BASE_IMAGE (e.g. python:3.11-slim-bookworm where a registry is reachable) skips debootstrap.
BASE_IMAGE=${HYPERPLANE_BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
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
ensure_base_image() {
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  if [ "$BASE_IMAGE" != "$DEFAULT_BASE_IMAGE" ]; then
    docker pull "$BASE_IMAGE"
    return
  fi
  local rootfs=$ROOT/build/base-rootfs cache=$ROOT/build/debootstrap-cache
  # The rootfs is kept (build/ is ignored): re-importing it after a `docker rmi` takes seconds.
  if [ ! -e "$rootfs/.complete" ]; then
    apt_ensure debootstrap
    rm -rf --one-file-system "$rootfs" # never into /proc or /sys left mounted by a failed run
    mkdir -p "$cache" # debootstrap keeps the downloaded .debs here for the next run
    # No python3-pip: `python3 -m venv` seeds pip from python3-venv's bundled wheel, and a system
    # pip would put pip back into the serving image.
    debootstrap --variant=minbase --cache-dir="$cache" \
      --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
      >"$ROOT/build/debootstrap.log" 2>&1 || die "debootstrap failed, see build/debootstrap.log"
    # TLS goes through an intercepting proxy here: the host bundle holds its CA (pip inside builds).
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    echo "deb $DEBIAN_MIRROR bookworm main" >"$rootfs/etc/apt/sources.list"
    # Both images carry this rootfs: drop the .debs (debootstrap copies them in as well), apt lists,
    # docs, man pages and translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    touch "$rootfs/.complete"
  fi
  # An imported image has no environment at all: without PATH, Dockerfile lines such as
  # ENV PATH=/opt/venv/bin:$PATH would drop the system directories.
  tar -C "$rootfs" --exclude=./.complete -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$DEFAULT_BASE_IMAGE" >/dev/null
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
