#!/usr/bin/env bash
# The SSH target's test hosts: OpenSSH (client + server) and rsync on this machine (the benchmark's baseline, and
# sshd for the remote-Docker test), and an sshd image for the container "hosts" (the Docker base image + rsync).
# Idempotent: installs only what is missing, builds the image only if its tag is missing. Run after provision-docker.sh.
set -euo pipefail
BASE="${MLTRAIN_TEST_BASE_IMAGE:-mltrain-test/python:bookworm}"
IMAGE="${MLTRAIN_TEST_SSHD_IMAGE:-mltrain-test/sshd:bookworm}"

. "$(dirname "$0")/lib.sh"

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  # No registry is reachable from a container: bring rsync's packages from this (same Debian release) machine.
  (cd "$ctx" && apt-get download -qq rsync libpopt0 >/dev/null 2>"$ctx/apt.log") || { cat "$ctx/apt.log" >&2; exit 1; }
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY *.deb /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb >/dev/null && rm -rf /tmp/debs && mkdir -p /run/sshd
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >/dev/null 2>"$ctx/build.log" || { cat "$ctx/build.log" >&2; exit 1; }
fi
