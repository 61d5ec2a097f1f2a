#!/usr/bin/env bash
# Installs what the test suite talks to for real. Idempotent; fast when all is present.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need=()
command -v git >/dev/null || need+=(git)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
