#!/usr/bin/env bash
# Installs what the test suite talks to for real. Idempotent; fast when all is present.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "provision: please install: ${need[*]}" >&2; exit 1
  fi
fi
