#!/usr/bin/env bash
# Builds the shoal image and the etcd image of the compose cluster without a registry.
#
#   deploy/build-image.sh [IMAGE [ETCD_IMAGE]]
#     IMAGE:      default $SHOAL_IMAGE, else shoal:latest
#     ETCD_IMAGE: default $SHOAL_ETCD_IMAGE, else shoal-etcd:latest
#
# Base image (both images use the same one), first that can be had:
#   1. $SHOAL_BASE, when set (any local image with python3.11 and its venv module);
#   2. python:3.11-slim, already in the engine or pulled (a failed pull costs a second);
#   3. shoal-base:bookworm-<recipe>, a Debian bookworm root filesystem with python3 and
#      python3-venv made by mmdebstrap from the mirror apt is configured with, cached as
#      deploy/.cache/base-*.tar.gz and `docker import`-ed (a plain tar on stdin).
# Wheels of shoal and its dependencies are built on the host with the host's Python 3.11
# (the image's Python is 3.11 too) and installed in the image with `pip --no-index`:
# nothing is downloaded during `docker build`. Dependency wheels are cached under
# deploy/.cache/ keyed on pyproject.toml, so a warm build needs no network at all.
# etcd comes from Debian's etcd-server package: $SHOAL_ETCD_DEB, else the .deb that
# `apt-get download etcd-server` fetches once into deploy/.cache/.
# An image whose inputs (base, Dockerfile, wheels or .deb) have not changed since it was
# built is left as it is (a label holds the hash of its inputs).
# Idempotent; concurrent runs wait for each other.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
image=${1:-${SHOAL_IMAGE:-shoal:latest}}
etcd_image=${2:-${SHOAL_ETCD_IMAGE:-shoal-etcd:latest}}
cache=$here/.cache
suite=bookworm
# What goes into the local base; changing it changes the tag, so the next run rebuilds.
base_packages=python3,python3-venv
recipe_version=1

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# Runs a noisy step with its output kept aside, shown only when the step fails.
quietly() {
  local log=$cache/last-step.log
  "$@" >"$log" 2>&1 || { cat "$log" >&2; die "failed: $*"; }
}

command -v docker >/dev/null || die "the docker CLI is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running, may this user use it?)"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

started=$SECONDS

# --- the host Python that builds the wheels -------------------------------------------
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" "$root/.venv/bin/python" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
       && "$candidate" -m pip --version >/dev/null 2>&1; then
      echo "$candidate"; return
    fi
  done
  die "need a Python 3.11 with pip on the host to build wheels for the image's Python 3.11 (set PYTHON=...)"
}
py=$(find_python)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# --- the base image -------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The configured mirrors, read from apt at run time: never written into the repository.
apt_mirror() {  # $1: "main" or "security"
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null | sort -u |
    awk -v want="$1" '
      want == "security" && $2 ~ /-security$/ { print $1; exit }
      want == "main" && $2 !~ /-/ { print $1; exit }'
}

make_local_base() {  # $1: tag
  local tarball=$cache/base-$suite-$recipe_version.tar.gz
  if [ ! -s "$tarball" ]; then
    command -v apt-get >/dev/null || die "no python:3.11-slim in the engine and no apt to make a local base; load one and set SHOAL_BASE"
    if ! command -v mmdebstrap >/dev/null; then
      [ "$(id -u)" = 0 ] || die "mmdebstrap is missing: run 'sudo apt-get install mmdebstrap' once"
      say "installing mmdebstrap"
      apt-get install -y -q -o DPkg::Lock::Timeout=300 mmdebstrap >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q -o DPkg::Lock::Timeout=300 mmdebstrap >/dev/null; } \
        || die "could not install mmdebstrap with apt-get"
    fi
    local main security
    main=$(apt_mirror main)
    security=$(apt_mirror security)
    [ -n "$main" ] || die "apt-get indextargets names no Debian mirror: configure apt, or set SHOAL_BASE"
    local sources=("deb ${main%/} $suite main" "deb ${main%/} $suite-updates main")
    [ -n "$security" ] && sources+=("deb ${security%/} $suite-security main")
    say "making a Debian $suite base with $base_packages from ${main} (once; cached in ${tarball#$root/})"
    local mode=()
    [ "$(id -u)" = 0 ] || mode=(--mode=unshare)
    mmdebstrap "${mode[@]}" --quiet --variant=minbase --include="$base_packages" \
      --aptopt='APT::Install-Recommends "false"' \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/*' \
      "$suite" - "${sources[@]}" 2>"$cache/last-step.log" | gzip -1 > "$tarball.tmp" \
      || { cat "$cache/last-step.log" >&2; die "mmdebstrap failed"; }
    mv "$tarball.tmp" "$tarball"
  fi
  say "importing ${tarball#$root/} as $1"
  gzip -dc "$tarball" | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$1" >/dev/null
}

pick_base() {
  local local_base=shoal-base:$suite-$recipe_version
  if [ -n "${SHOAL_BASE:-}" ]; then
    have_image "$SHOAL_BASE" || die "SHOAL_BASE=$SHOAL_BASE is not an image in this engine"
    echo "$SHOAL_BASE"
  elif have_image python:3.11-slim; then
    echo python:3.11-slim
  elif have_image "$local_base"; then
    echo "$local_base"
  elif timeout 30 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim
  else
    say "python:3.11-slim cannot be pulled (no registry): using a local Debian base"
    make_local_base "$local_base"
    echo "$local_base"
  fi
}
base=$(pick_base)

# --- wheels ---------------------------------------------------------------------------
# What pyproject.toml says about packaging: the source folders, the build requirements and
# a key for the dependency list, one per line.
mapfile -t project < <("$py" - "$root/pyproject.toml" <<'EOF'
import hashlib, platform, sys, tomllib
with open(sys.argv[1], "rb") as f:
    doc = tomllib.load(f)
requires = doc["build-system"]["requires"]
wanted = [doc["project"].get("dependencies", []), requires, platform.machine(), "run/ and build/"]
print(" ".join(sorted({d.split("/")[0] for d in doc["tool"]["setuptools"]["package-dir"].values()})))
print("\t".join(requires))
print(hashlib.sha256(repr(wanted).encode()).hexdigest()[:16])
EOF
)
read -ra package_dirs <<<"${project[0]}"
IFS=$'\t' read -ra build_requires <<<"${project[1]}"
deps=$cache/wheels-${project[2]}

# A copy of the sources the wheel is made of, so building never writes into the work tree.
src=$cache/src
rm -rf "$src" && mkdir -p "$src"
extras=()
for name in README.md LICENSE; do [ -e "$root/$name" ] && extras+=("$name"); done
tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml "${extras[@]}" "${package_dirs[@]}" | tar -C "$src" -xf -

if [ ! -d "$deps" ]; then
  say "building dependency wheels (once per change of dependencies; cached in ${deps#"$root"/})"
  rm -rf "$cache"/wheels-*
  quietly "$py" -m pip wheel --wheel-dir "$deps.tmp/run" "$src"
  rm -f "$deps.tmp"/run/shoal-*.whl
  quietly "$py" -m pip wheel --wheel-dir "$deps.tmp/build" "${build_requires[@]}"
  mv "$deps.tmp" "$deps"
fi

# A venv with the build requirements, made once, so that building shoal's wheel does not
# set up an isolated build environment every time (most of a warm build's time).
builder=$deps/build-venv
if [ ! -x "$builder/bin/python" ]; then
  rm -rf "$builder"
  quietly "$py" -m venv "$builder"
  quietly "$builder/bin/python" -m pip install --no-index "$deps"/build/*.whl
fi

# The shoal wheel, rebuilt only when its sources change. A fixed SOURCE_DATE_EPOCH makes
# it byte-identical while the sources are, so Docker's layer cache holds too.
app=$cache/app-$(tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . | sha256sum | cut -c1-16)
if [ ! -d "$app" ]; then
  rm -rf "$cache"/app-*
  SOURCE_DATE_EPOCH=315532800 quietly "$builder/bin/python" -m pip wheel --no-build-isolation --no-deps --no-index \
    --wheel-dir "$app.tmp" "$src"
  mv "$app.tmp" "$app"
fi

# --- the etcd package ------------------------------------------------------------------
etcd_deb() {
  if [ -n "${SHOAL_ETCD_DEB:-}" ]; then
    [ -s "$SHOAL_ETCD_DEB" ] || die "SHOAL_ETCD_DEB=$SHOAL_ETCD_DEB is not a file"
    echo "$SHOAL_ETCD_DEB"; return
  fi
  local found
  found=$(ls "$cache"/etcd-server_*.deb 2>/dev/null | tail -n 1)
  if [ -z "$found" ]; then
    command -v apt-get >/dev/null || die "no apt-get to fetch Debian's etcd-server package: set SHOAL_ETCD_DEB=path/to/etcd-server.deb"
    say "fetching Debian's etcd-server package (once; cached in ${cache#"$root"/})"
    (cd "$cache" && quietly apt-get download -q etcd-server) \
      || die "apt-get download etcd-server failed: run apt-get update, or set SHOAL_ETCD_DEB"
    found=$(ls "$cache"/etcd-server_*.deb | tail -n 1)
  fi
  echo "$found"
}
deb=$(etcd_deb)

# --- the images -------------------------------------------------------------------------
# Without buildx the CLI refuses BuildKit, so ask for the classic builder; both builders
# use local base images as they are (no --pull, no `# syntax=` line: nothing asks a registry).
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
base_id=$(docker image inspect --format '{{.Id}}' "$base")
label=org.shoal.inputs

build() {  # $1: tag, $2: Dockerfile, $3: context (filled already)
  local inputs previous
  # The hash of everything the image is made of; an image that carries it is up to date.
  inputs=$( { echo "$base_id"; cat "$2"; tar -C "$3" --sort=name --mtime=@0 --owner=0 --group=0 -cf - .; } | sha256sum | cut -c1-16)
  if [ "$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null)" = "$inputs" ]; then
    say "$1 is up to date"
    return
  fi
  say "building $1 on $base"
  previous=$(docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
  quietly docker build --build-arg BASE="$base" --label "$label=$inputs" --tag "$1" --file "$2" "$3"
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$1")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true  # the image it replaced, unless a container still uses it
  fi
  say "built $1 ($(( $(docker image inspect --format '{{.Size}}' "$1") / 1000000 )) MB)"
}

context=$cache/context
rm -rf "$context" && mkdir -p "$context"
cp "$here/healthcheck.py" "$context/"
cp -rl "$deps/run" "$context/deps" 2>/dev/null || cp -r "$deps/run" "$context/deps"
cp -rl "$app" "$context/app" 2>/dev/null || cp -r "$app" "$context/app"
build "$image" "$here/Dockerfile" "$context"

etcd_context=$cache/etcd-context
rm -rf "$etcd_context" && mkdir -p "$etcd_context"
cp "$here/healthcheck.py" "$etcd_context/"
cp "$deb" "$etcd_context/etcd-server.deb"
build "$etcd_image" "$here/Dockerfile.etcd" "$etcd_context"
say "done in $((SECONDS - started)) s: $image and $etcd_image ($(dpkg-deb -f "$deb" Package Version 2>/dev/null | cut -d' ' -f2 | paste -sd' ' || basename "$deb"))"
