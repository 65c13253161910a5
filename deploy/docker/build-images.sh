#!/usr/bin/env bash
# Build the images of the compose stack on a machine that cannot pull from Docker Hub (CI, this
# project's test machines): every image is built locally from Debian packages and PyPI.
#
#   deploy/docker/build-images.sh            # prints the variables the compose file takes
#
# 1. tickvault-local/debian:bookworm     `debootstrap --variant=minbase bookworm` + `docker import`
#                                        (the mirror of this machine's apt sources; plain HTTP)
# 2. tickvault-local/python:3.11         Debian's python3.11 (+ venv), the stand-in for python:3.11-slim
# 3. tickvault-local/timescaledb:pg15    PostgreSQL 15 + TimescaleDB's Apache build from source
#                                        (scripts/install-timescaledb.sh), entrypoint compatible
#                                        with the official image's POSTGRES_* variables
# 4. tickvault-local/prometheus          Debian's prometheus package
# 5. tickvault:local                     the project's Dockerfile on BASE_IMAGE=tickvault-local/python:3.11
#
# pip inside the build needs this machine's CA bundle (PyPI is reached through a TLS-inspecting
# proxy here): it is handed in as the build secret `pip_ca` (PIP_CA_FILE, default the `cert` of
# `pip config list`, else /etc/ssl/certs/ca-certificates.crt) and never stored in an image.
# Step 1 is skipped when its image exists (FORCE=1 redoes it: e.g. for Debian's point releases);
# steps 2-5 always run and are build-cache hits (a second or two each) unless their files
# changed. From nothing: ~4 min on a shared 2-core machine. Needs root (debootstrap), docker.
# Builds on one machine run one at a time (a lock in /tmp): CI starts one in the background
# while the tests run, and the stack test's own call waits for it, then finds every image built.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec 9>"${TMPDIR:-/tmp}/tickvault-build-images.lock"
flock 9
export DOCKER_BUILDKIT=1
# a docker CLI that builds with BuildKit: a newer CLI needs the buildx plugin for it; Debian's
# docker.io (20.10) has it built in
docker() {
  if command docker buildx version >/dev/null 2>&1 || ! [ -x /usr/bin/docker ]; then command docker "$@"
  else /usr/bin/docker "$@"; fi
}
PREFIX=${LOCAL_IMAGE_PREFIX:-tickvault-local}
DEBIAN_IMAGE=$PREFIX/debian:bookworm
PYTHON_IMAGE=$PREFIX/python:3.11
TIMESCALEDB_IMAGE=$PREFIX/timescaledb:pg15
PROMETHEUS_IMAGE=$PREFIX/prometheus:debian
TICKVAULT_IMAGE=${TICKVAULT_IMAGE:-tickvault:local}

log() { echo "build-images: $*" >&2; }
have() { [ -z "${FORCE:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }
timed() { local t=$SECONDS; "$@"; log "$1 $2: $((SECONDS - t)) s"; }

mirror() {  # the Debian mirror of this machine's apt sources
  local uri
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${uri:-http://deb.debian.org/debian}"
}

pip_ca() {
  local ca=${PIP_CA_FILE:-}
  [ -n "$ca" ] || ca=$(pip config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -1)
  [ -n "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
  [ -r "$ca" ] || { log "error: CA bundle $ca not readable (set PIP_CA_FILE)"; exit 1; }
  echo "$ca"
}

debian_image() {
  have "$DEBIAN_IMAGE" && return 0
  command -v debootstrap >/dev/null || { log "error: debootstrap missing (apt-get install debootstrap)"; exit 1; }
  local root; root=$(mktemp -d /var/tmp/tickvault-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase bookworm "$root" "$(mirror)" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  # what an image does not need: apt's lists and caches (docker's debian image drops them too)
  # and invoke-rc.d must not start services inside a build (as in docker's debian image)
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  # apt sources in deb822 form, as in docker's debian image (scripts/install-timescaledb.sh reads it)
  rm -f "$root/etc/apt/sources.list"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: %s\n' \
    "$(mirror)" /usr/share/keyrings/debian-archive-keyring.gpg > "$root/etc/apt/sources.list.d/debian.sources"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
}

build() {  # build IMAGE DOCKERFILE [docker build args...]
  local image=$1 file=$2; shift 2
  docker build -q -f "$file" -t "$image" "$@" . >/dev/null
}

timed debian_image "$DEBIAN_IMAGE"
timed build "$PYTHON_IMAGE" deploy/docker/python.Dockerfile --build-arg BASE_IMAGE="$DEBIAN_IMAGE"
timed build "$TIMESCALEDB_IMAGE" deploy/docker/timescaledb.Dockerfile --build-arg BASE_IMAGE="$DEBIAN_IMAGE"
timed build "$PROMETHEUS_IMAGE" deploy/docker/prometheus.Dockerfile --build-arg BASE_IMAGE="$DEBIAN_IMAGE"
timed build "$TICKVAULT_IMAGE" Dockerfile --build-arg BASE_IMAGE="$PYTHON_IMAGE" \
  --secret id=pip_ca,src="$(pip_ca)"

# what docker compose needs to use them (the test stack overrides image names and base only)
echo "BASE_IMAGE=$PYTHON_IMAGE"
echo "TICKVAULT_IMAGE=$TICKVAULT_IMAGE"
echo "TIMESCALEDB_IMAGE=$TIMESCALEDB_IMAGE"
echo "PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE"
