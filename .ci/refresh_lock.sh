#!/usr/bin/env bash
# Rebuilds requirements/lock.txt: resolves the test extra (which includes every other CPU
# extra) in a fresh venv without system site-packages, at the newest versions PyPI serves,
# and writes the exact versions. Run .ci/drift.sh first to see what would change and break.
#
#   bash .ci/refresh_lock.sh && git diff requirements/lock.txt
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -e ".[test]"
"$venv/bin/python" -m pip install -q --no-deps animal-mnist
tmp="$(mktemp)"
{
  echo "# Exact versions of every package a CPU install of diva_jax[test] resolves, made in a"
  echo "# fresh venv by .ci/refresh_lock.sh ($("$venv/bin/python" --version), $(uname -m))."
  echo "# Use it as constraints: pip install -c requirements/lock.txt -e \".[test]\""
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -vi '^diva[-_]jax' | sort -f
} > "$tmp"
mv "$tmp" requirements/lock.txt
rm -rf "$(dirname "$venv")"
echo "refresh_lock: wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
