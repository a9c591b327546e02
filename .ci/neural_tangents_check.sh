#!/usr/bin/env bash
# Cross-check of diva_jax's empirical NTK against neural-tangents 0.6.5 (not run by CI).
#
# neural-tangents' last release does not import on current JAX, so its side runs in a
# throwaway venv with jax/jaxlib 0.4.25 and numpy<2; it saves parameters, inputs (fixed
# numpy seed, float64) and its kernels to OUT; then this venv's python (where diva_jax is
# importable) recomputes them with diva_jax and prints the relative differences.
#
#   bash .ci/neural_tangents_check.sh [OUT]   # exit 0 when every rel. diff <= NT_TOL
#
# Environment:
#   NT_TOL=1e-10      tolerance on ||K - K_nt||_F / ||K_nt||_F (float64; observed ~1e-15)
#   NT_WITH_TF=1      install neural-tangents with its declared deps (tensorflow, tf2jax:
#                     ~2.5 GB). Default: --no-deps and no TensorFlow; the check script then
#                     stubs neural_tangents.experimental (the only TF user, empirical_tf).
#   NT_VENV=DIR       reuse / keep the neural-tangents venv at DIR (else a temp one, removed)
#   NT_PYTHON=python3.11   interpreter for that venv (jaxlib 0.4.25 has cp39..cp312 wheels)
#   PYTHON=python     our side's interpreter (falls back to the repo's .venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
script="$here/neural_tangents_check.py"
tol="${NT_TOL:-1e-10}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="${1:-$tmp/out}"
mkdir -p "$out"

venv="${NT_VENV:-$tmp/nt-venv}"
nt_py="$venv/bin/python"
if [[ ! -x "$nt_py" ]]; then
  "${NT_PYTHON:-python3.11}" -m venv "$venv"
  # An empty PIP_CONSTRAINT drops the machine-wide constraint file (it only caps
  # torch, irrelevant here) so this venv's resolution depends on the pins below only.
  pins=(jax==0.4.25 jaxlib==0.4.25 "numpy<2")
  pipq() {
    PIP_CONSTRAINT= PIP_DISABLE_PIP_VERSION_CHECK=1 "$nt_py" -m pip install -q "$@" 2>&1 \
      | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    return "${PIPESTATUS[0]}"
  }
  if [[ "${NT_WITH_TF:-0}" == 1 ]]; then
    pipq "${pins[@]}" neural-tangents==0.6.5
  else
    pipq "${pins[@]}" frozendict
    pipq --no-deps neural-tangents==0.6.5
  fi
fi
echo "== neural-tangents side ($nt_py)"
"$nt_py" -m pip freeze 2>/dev/null \
  | grep -iE '^(jax|jaxlib|numpy|scipy|ml.dtypes|neural.tangents|tensorflow|tf2jax)==' \
  | tr '\n' ' '; echo
TF_CPP_MIN_LOG_LEVEL=3 "$nt_py" "$script" --side=nt --out="$out"

ours_py="${PYTHON:-python}"
if ! "$ours_py" -c 'import diva_jax' 2>/dev/null; then
  ours_py="$repo/.venv/bin/python"
fi
echo "== diva_jax side ($ours_py)"
"$ours_py" "$script" --side=ours --out="$out" --tol="$tol"
