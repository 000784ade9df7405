# shellcheck shell=bash
# Helpers sourced by scripts/*: timed steps, apt installs, the Docker engine, the base image and venvs.
# Each ensure_* function is idempotent: it checks first and only does work when something is missing.
# The decisions (which Python, which torch wheel from where, which base image, what a pytest command line
# needs) are made by scripts/lib/setup_plan.py, tested in tests/setup/; the functions here carry them out.
# bash 3.2 (macOS's /bin/bash) must be able to run everything outside the root-only Debian paths.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEFAULT_BASE_IMAGE=hyperplane/python:3.11-bookworm
# The base pulled from a registry where one answers (ensure_base_image); debootstrap is the fallback.
REGISTRY_BASE_IMAGE=${HYPERPLANE_REGISTRY_BASE_IMAGE:-python:3.11-slim-bookworm}
# HYPERPLANE_BASE_IMAGE: always this base (pulled when missing). ensure_base_image sets BASE_IMAGE.
BASE_IMAGE=${HYPERPLANE_BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
# Seconds a `docker pull` of the base waits for a registry to answer before falling back to debootstrap.
PULL_TIMEOUT=${HYPERPLANE_PULL_TIMEOUT:-30}
# Version of the debootstrap recipe (build_base_rootfs, import_base_image). The base image carries it
# as a label and build/base-rootfs/.complete holds it: a base made by another recipe is rebuilt, never
# reused. Bump it with every change to what those two functions put into the image.
BASE_RECIPE=2
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_MANIFEST=usr/share/hyperplane/base-manifest.txt # inside the rootfs: build date, versions, packages
DOCKERD_LOG=/var/log/hyperplane-dockerd.log

STEP=           # the step running now (step), named by every error
STEP_COMMAND=   # and its command line
DIED=           # set by die: the exit trap then adds nothing
FAILED_COMMAND= # the first command that failed (ERR trap), for an error that did not go through die
log() { printf '%s\n' "$*" >&2; }
die() { log "error: ${STEP:+$STEP: }$*"; DIED=1; exit 1; }
# A step that fails without die (a command failing under set -e) is still named, with the command.
on_exit() {
  local rc=$? command=$FAILED_COMMAND
  [ "$command" != '"$@"' ] || command=$STEP_COMMAND # the step's own command failed
  if [ "$rc" != 0 ] && [ -n "$STEP" ] && [ -z "$DIED" ]; then
    log "error: $STEP: \`${command:-?}\` failed (exit $rc); its output is above"
  fi
}
trap on_exit EXIT
trap '[ -n "$FAILED_COMMAND" ] || FAILED_COMMAND=$BASH_COMMAND' ERR
set -o errtrace

# now: seconds since the epoch, with microseconds where the shell can (bash >= 5, else perl).
now() {
  if [ -n "${EPOCHREALTIME:-}" ]; then echo "$EPOCHREALTIME"; return; fi
  perl -MTime::HiRes=time -e 'printf "%.6f\n", time' 2>/dev/null || date +%s
}

# step NAME COMMAND...: run COMMAND and print "NAME: 1.2s" when it succeeds; an error names the step.
step() {
  local name=$1 t0
  t0=$(now)
  shift
  STEP=$name STEP_COMMAND=$*
  "$@"
  STEP=
  log "$(awk -v a="$t0" -v b="$(now)" -v n="$name" 'BEGIN { printf "%-12s %6.1fs", n ":", b - a }')"
}

is_debian_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; }

# apt_ensure [--why TEXT] PKG...: install the packages that are missing (Debian-like machines, as root).
# Anywhere else it fails, saying which packages, why (TEXT) and the command that installs them.
apt_ensure() {
  local missing=() p why=
  if [ "${1:-}" = --why ]; then why=$2; shift 2; fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! is_debian_root; then
    command -v apt-get >/dev/null &&
      die "${why:+$why. That }needs the system packages ${missing[*]}, and only root can install them. Fix: run
  sudo apt-get install -y ${missing[*]}
then run this again."
    die "${why:+$why. That }needs ${missing[*]} (Debian/Ubuntu package names). Fix: install them with your
  package manager, then run this again."
  fi
  log "apt-get install ${missing[*]}${why:+ ($why)}"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# plan ARGS...: scripts/lib/setup_plan.py ARGS (the decisions), run by the Python need_planner found.
PLANNER_PYTHON=
plan() {
  [ -n "$PLANNER_PYTHON" ] || need_planner
  "$PLANNER_PYTHON" "$ROOT/scripts/lib/setup_plan.py" "$@"
}
# need_planner: PLANNER_PYTHON, the first Python >= 3.8 of .venv (fastest), then PATH. Only a machine
# without any python3 needs one installed (as root on Debian/Ubuntu).
need_planner() {
  local c
  for c in "$ROOT/.venv/bin/python" python3 python3.13 python3.12 python3.11 python3.10 python3.9 python3.8; do
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
      PLANNER_PYTHON=$c
      return 0
    fi
  done
  is_debian_root || die "no python3 on PATH. Fix: install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: sudo apt-get
  install python3 python3-venv; macOS: brew install python@3.12), then run this again."
  apt_ensure --why "the set-up's decisions are a Python script" python3
  PLANNER_PYTHON=python3
}

# docker_problem: the cause and the fix when `docker info` fails and this script may not install Docker.
docker_problem() {
  local said
  if ! command -v docker >/dev/null; then
    echo "no Docker engine: 'docker' is not on PATH. Fix: install Docker Desktop (macOS, Linux) or Docker Engine
  (Debian/Ubuntu, as root: apt-get install docker.io, then usermod -aG docker $(id -un) and log in again),
  start it, make sure 'docker info' works, then run this again."
    return
  fi
  said=$(docker info 2>&1 >/dev/null | grep -v '^ *$' | tail -n 1)
  case $said in
    *"permission denied"*)
      echo "user $(id -un) may not use the Docker engine (${said}). Fix: as root, usermod -aG docker $(id -un),
  then log out and in again (or run 'newgrp docker'), then run this again." ;;
    *)
      echo "cannot reach a Docker engine ('docker info': ${said:-no answer}). Fix: start it (Docker Desktop,
  or as root: systemctl start docker), make sure 'docker info' works for $(id -un), then run this again." ;;
  esac
}

# A Docker engine reachable through `docker info`: as root on Debian/Ubuntu, Debian's engine is installed and
# started when missing; anywhere else Docker must already run (the error says how).
ensure_docker() {
  docker info >/dev/null 2>&1 && return 0
  is_debian_root || die "$(docker_problem)"
  apt_ensure --why "the images need a Docker engine" docker.io
  # A dockerd may already be starting (another script, or systemd): only start one if none runs.
  if ! pgrep -x dockerd >/dev/null; then
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: dockerd outlives this script and its terminal; others need it afterwards.
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  local i
  for i in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    [ "$i" = 60 ] && die "dockerd did not answer within 60 s; see the end of $DOCKERD_LOG:
$(tail -n 20 "$DOCKERD_LOG" 2>/dev/null)"
    sleep 1
  done
}

# docker compose (v2 plugin) or docker-compose (v1, Debian's): SDK local mode runs it (the SDK venvs only).
ensure_compose() {
  command -v docker-compose >/dev/null && return 0
  docker compose version >/dev/null 2>&1 && return 0
  apt_ensure --why "SDK local mode (.venv-sdk2/3, the sdk tests) runs docker compose, which is not here" \
    docker-compose
}

# Base image of both Dockerfiles, BASE_IMAGE (setup_plan.py base-image decides): HYPERPLANE_BASE_IMAGE when
# set; else $REGISTRY_BASE_IMAGE when it is here; else $DEFAULT_BASE_IMAGE when the current debootstrap recipe
# made it; else $REGISTRY_BASE_IMAGE pulled (given up when no registry answers within PULL_TIMEOUT s); else
# $DEFAULT_BASE_IMAGE built with debootstrap (root on Debian/Ubuntu). An image or rootfs made by another
# recipe (no or another org.hyperplane.base.recipe label, another .complete) is rebuilt, not reused: CI
# machines keep both from run to run.
ensure_base_image() {
  local rootfs=$ROOT/build/base-rootfs have=absent registry_local=0 override=${HYPERPLANE_BASE_IMAGE:-}
  local override_local=0 failed="" out action image note message reason
  if [ -n "$override" ]; then
    if docker image inspect "$override" >/dev/null 2>&1; then override_local=1; fi
  fi
  if docker image inspect "$REGISTRY_BASE_IMAGE" >/dev/null 2>&1; then registry_local=1; fi
  have=$(docker image inspect -f '{{index .Config.Labels "org.hyperplane.base.recipe"}}' "$DEFAULT_BASE_IMAGE" \
    2>/dev/null) || have=absent
  while :; do
    out=$(plan base-image --registry-image "$REGISTRY_BASE_IMAGE" --registry-local "$registry_local" \
      --default-image "$DEFAULT_BASE_IMAGE" --default-recipe "$have" --recipe "$BASE_RECIPE" \
      --override "$override" --override-local "$override_local" ${failed:+--pull-failed "$failed"}) ||
      die "scripts/lib/setup_plan.py base-image failed"
    eval "$out"
    case $action in
      use) BASE_IMAGE=$image; return 0 ;;
      pull)
        log "pulling $image (given up when no registry answers within $PULL_TIMEOUT s)"
        if reason=$(plan pull "$image" --answer-timeout "$PULL_TIMEOUT"); then
          BASE_IMAGE=$image
          return 0
        fi
        failed=${reason:-docker pull failed} ;;
      debootstrap) log "$note"; break ;;
      *) die "$message" ;;
    esac
  done
  # The rootfs is kept (build/ is ignored): re-importing it after a `docker rmi` takes seconds.
  [ "$(cat "$rootfs/.complete" 2>/dev/null)" = "recipe $BASE_RECIPE" ] || build_base_rootfs "$rootfs"
  import_base_image "$rootfs" "$DEFAULT_BASE_IMAGE"
  BASE_IMAGE=$DEFAULT_BASE_IMAGE
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
stamp() { (cd "$ROOT" && sha256 "$@") | sha256 | cut -d' ' -f1; }
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi; } # macOS: shasum

# choose_python dev|sdk: VENV_PYTHON, the interpreter for a new venv (setup_plan.py python: the best Python
# 3.11-3.13 on PATH, 3.11 first, or HYPERPLANE_PYTHON). As root on Debian/Ubuntu, what is missing (a
# python3.X, its venv module, its headers and a compiler for .venv) is installed first; anywhere else the
# error says what is missing, why, and the command that installs it.
choose_python() {
  local purpose=$1 round out action python version tag packages why message
  for round in 1 2 3; do
    out=$(plan python --for "$purpose") || die "scripts/lib/setup_plan.py python failed"
    eval "$out"
    # shellcheck disable=SC2034 # VENV_PYTHON is for the caller (scripts/bootstrap)
    case $action in
      use) VENV_PYTHON=$python; VENV_PYTHON_VERSION=$version; return 0 ;;
      apt) apt_ensure --why "$why" "${packages[@]}" ;;
      *) die "$message" ;;
    esac
  done
  die "no usable Python after installing ${packages[*]} (round $round)"
}

# new_venv DIR PYTHON: an empty venv at DIR made by PYTHON (replacing what is there).
new_venv() {
  case $PLANNER_PYTHON in "$1"/*) PLANNER_PYTHON= ;; esac # that interpreter goes with the old venv
  log "creating ${1#"$ROOT"/} with $2 (Python ${VENV_PYTHON_VERSION:-?})"
  rm -rf "$1"
  "$2" -m venv "$1"
}

# pip_install VENV ARGS...: quiet pip install into VENV. The filter drops a harmless warning
# that this machine's pip config (a missing local index) prints once per package.
pip_install() {
  local venv=$1
  shift
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# torch_wheel venv PYTHON | image ARCH: TORCH_WHEEL, the CPU torch wheel (version pinned in
# requirements/torch.txt) for a venv of PYTHON, or for the images on a Docker engine of ARCH (their Python
# is Debian bookworm's 3.11). setup_plan.py torch-wheel looks in $TORCH_WHEEL_DIR, pip's find-links and
# build/torch-wheels/; with none there, pip downloads it into build/torch-wheels/ from $TORCH_CPU_INDEX_URL
# (default https://download.pytorch.org/whl/cpu). PyPI's Linux x86_64 torch is the multi-GB CUDA build:
# never used here.
torch_wheel() {
  local purpose=$1 pip_python out action wheel message pip_args requirement index_url cache logfile
  local options=()
  if [ "$purpose" = venv ]; then
    pip_python=$2
    options=(--for venv --python "$pip_python")
  else
    pip_python=$ROOT/.venv/bin/python
    options=(--for image --arch "$2" --python "$pip_python")
  fi
  out=$(plan torch-wheel "${options[@]}") || die "scripts/lib/setup_plan.py torch-wheel failed"
  eval "$out"
  case $action in
    use) TORCH_WHEEL=$wheel; return 0 ;;
    download) ;;
    *) die "$message" ;;
  esac
  "$pip_python" -m pip --version >/dev/null 2>&1 ||
    die "no .venv whose pip would download the torch wheel. Fix: run scripts/bootstrap, then this again."
  log "downloading $requirement from $index_url (no local wheel fits; about 200 MB)"
  mkdir -p "$cache"
  logfile=$cache/download.log
  "$pip_python" -m pip "${pip_args[@]}" --disable-pip-version-check >"$logfile" 2>&1 ||
    die "$message. pip said: $(grep -v '^ *$' "$logfile" | tail -n 1) (all of it: ${logfile#"$ROOT"/})"
  out=$(plan torch-wheel "${options[@]}" --no-download) || die "scripts/lib/setup_plan.py torch-wheel failed"
  eval "$out"
  [ "$action" = use ] || die "$message. pip downloaded something else (${logfile#"$ROOT"/})"
  # shellcheck disable=SC2034 # for the caller
  TORCH_WHEEL=$wheel
}
