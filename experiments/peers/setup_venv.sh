#!/usr/bin/env bash
# Create the isolated venv for run_peers.py: pyDVL 0.10.0 pins numpy<2, so it
# cannot share the project's venv (numpy 2).
#
#   bash experiments/peers/setup_venv.sh VENV_DIR
#
# Installs the exact pins in requirements.txt (next to this script), then tries
# valda (optional: if it fails to install or import, prints one line saying why
# and still succeeds). Idempotent: does nothing if VENV_DIR/bin/python already
# imports pydvl at the pinned version. Env: PYTHON (default python3, 3.11/3.12).
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
VENV_DIR=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REQ="$HERE/requirements.txt"
PYTHON=${PYTHON:-python3}
PYDVL_VERSION=$(sed -n 's/^pyDVL==//p' "$REQ")
VALDA_VERSION=${VALDA_VERSION:-0.1.10}
PY="$VENV_DIR/bin/python"

print_versions() {
    "$PY" - <<'PYEOF'
import sys
from importlib import metadata
def v(d):
    try:
        return metadata.version(d)
    except metadata.PackageNotFoundError:
        return None
valda_v = v("valda")
if valda_v is not None:
    try:
        import valda.tmc_shapley, valda.beta_shapley  # noqa: F401
    except Exception as exc:
        valda_v = f"{valda_v} (not importable: {type(exc).__name__})"
print(f"peers venv: python={sys.version.split()[0]} pydvl={v('pyDVL')} "
      f"numpy={v('numpy')} scikit-learn={v('scikit-learn')} scipy={v('scipy')} "
      f"joblib={v('joblib')} valda={valda_v}")
PYEOF
}

if [ -x "$PY" ] && "$PY" -c "import sys, pydvl; sys.exit(pydvl.__version__ != '$PYDVL_VERSION')" >/dev/null 2>&1; then
    echo "peers venv $VENV_DIR already has pyDVL $PYDVL_VERSION; nothing to do"
    print_versions
    exit 0
fi

"$PYTHON" -m venv "$VENV_DIR"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check -r "$REQ"
"$PY" -c "import sys, pydvl; sys.exit(pydvl.__version__ != '$PYDVL_VERSION')"

# valda is optional: the script succeeds without it.
if pip_out=$("$PY" -m pip install --quiet --disable-pip-version-check \
        -c "$REQ" "valda==$VALDA_VERSION" 2>&1); then
    if imp_out=$("$PY" -c "import valda.tmc_shapley, valda.beta_shapley" 2>&1); then
        :
    else
        echo "valda unavailable: installed valda==$VALDA_VERSION but import failed: $(printf '%s\n' "$imp_out" | tail -n 1)"
    fi
else
    why=$(printf '%s\n' "$pip_out" | grep -i 'error' | tail -n 1 || true)
    [ -n "$why" ] || why=$(printf '%s\n' "$pip_out" | tail -n 1)
    echo "valda unavailable: pip install valda==$VALDA_VERSION failed: $why"
fi

print_versions
