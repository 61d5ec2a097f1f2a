#!/usr/bin/env bash
# The headless browser the sweep report's test opens the page in (tests/tracking/test_report_browser.py):
# Debian's chromium and the chromedriver that drives it (selenium, from the dev extra, talks to it).
# Idempotent: installs only what is missing.
set -euo pipefail

. "$(dirname "$0")/lib.sh"

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
