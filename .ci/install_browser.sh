#!/usr/bin/env bash
# Installs what tests/test_report.py needs to open the HTML report in a real browser:
# Chromium + chromedriver from the Debian packages, and selenium from PyPI. Idempotent:
# each part is installed only when missing. Never fails the build: if something cannot be
# installed it says so and exits 0, and the browser test then skips with a reason naming
# this script.
set -uo pipefail
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install_browser: chromium and chromedriver already present"
else
  echo "install_browser: installing chromium and chromium-driver (apt)"
  if ! { $SUDO apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
              chromium chromium-driver; }; then
    echo "install_browser: WARNING: apt could not install chromium/chromium-driver;" \
         "the browser test in tests/test_report.py will be skipped" >&2
  fi
fi

if python -c "import selenium" >/dev/null 2>&1; then
  echo "install_browser: selenium already importable"
else
  echo "install_browser: installing selenium (pip)"
  if ! python -m pip install -q selenium; then
    echo "install_browser: WARNING: pip could not install selenium;" \
         "the browser test in tests/test_report.py will be skipped" >&2
  fi
fi
exit 0
