#!/usr/bin/env bash
# A real Docker engine and a local Python base image (no registry is reachable here).
# Idempotent: starts dockerd only if no engine answers; builds the image only if its tag is missing.
# Prints nothing on the fast path. Writes the engine's log to $MLTRAIN_DOCKERD_LOG (default /tmp/mltrain-dockerd.log).
set -euo pipefail
IMAGE="${MLTRAIN_TEST_BASE_IMAGE:-mltrain-test/python:bookworm}"
LOG="${MLTRAIN_DOCKERD_LOG:-/tmp/mltrain-dockerd.log}"
ROOTFS="${MLTRAIN_ROOTFS_DIR:-/var/tmp/mltrain-rootfs}"

. "$(dirname "$0")/lib.sh"

if ! command -v dockerd >/dev/null; then apt_install docker.io; fi
# Debian's 20.10 client talks to Debian's 20.10 engine; the preinstalled 28.x client works too.
if ! docker version >/dev/null 2>&1; then
  nohup dockerd >"$LOG" 2>&1 &
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "provision: dockerd did not start; see $LOG" >&2; exit 1; }
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || apt_install debootstrap
  rm -rf "$ROOTFS.tmp"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,openssh-server,ca-certificates \
    bookworm "$ROOTFS.tmp" >/dev/null
  tar -C "$ROOTFS.tmp" -c . | docker import --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
  rm -rf "$ROOTFS.tmp"
fi
