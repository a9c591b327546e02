#!/usr/bin/env bash
# Everything the test suite needs, installed into the active Python environment (use a fresh
# venv): the package with its test extra at the locked versions, the optional animal-mnist
# dataset, and headless Chromium for the report's browser test.
#
#   python3 -m venv .venv && . .venv/bin/activate && bash .ci/setup_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -c requirements/lock.txt -e ".[test]"
# The animal-mnist wheel's metadata drags TensorFlow, which its data does not need.
python -m pip install -q -c requirements/lock.txt --no-deps animal-mnist \
  || echo "setup_venv: animal-mnist not installed; its tests will skip" >&2
bash .ci/install_browser.sh
