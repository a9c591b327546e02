#!/usr/bin/env bash
# The drift report, run by a maintainer before refreshing the lock (not part of CI's
# blocking path): resolves the newest versions of diva_jax[test] WITHOUT the lock in a fresh
# venv, lists every package whose version differs from requirements/lock.txt (and those
# added or dropped), then runs the fast tests (-m "not slow") there and prints what broke.
#
#   bash .ci/drift.sh            # exit 0 when the fast tests pass on the newest versions
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
python3 -m venv "$root/venv"
py="$root/venv/bin/python"
if ! "$py" -m pip install -q -e ".[test]"; then
  echo "drift: the unlocked install FAILED to resolve; see pip's message above"; exit 1
fi
"$py" -m pip install -q --no-deps animal-mnist || true
"$py" -m pip freeze --exclude-editable | grep -vi '^diva[-_]jax' > "$root/new.txt"
"$py" - "$root/new.txt" requirements/lock.txt <<'PY'
import re, sys
def read(path):
  out = {}
  for line in open(path):
    line = line.strip()
    if line and not line.startswith("#") and "==" in line:
      name, ver = line.split("==", 1)
      out[re.sub(r"[-_.]+", "-", name).lower()] = ver
  return out
new, old = read(sys.argv[1]), read(sys.argv[2])
changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
print("drift: newest resolution vs requirements/lock.txt")
for k in changed:
  print(f"  changed  {k}: {old[k]} -> {new[k]}")
for k in sorted(new.keys() - old.keys()):
  print(f"  added    {k}=={new[k]}")
for k in sorted(old.keys() - new.keys()):
  print(f"  dropped  {k}=={old[k]}")
if not (changed or new.keys() ^ old.keys()):
  print("  no change: the lock is current")
PY
echo "drift: fast tests on the newest versions"
"$py" -m pytest -n 2 -q -m "not slow" -p no:randomly tests > "$root/pytest.txt" 2>&1
rc=$?
grep -E "^(FAILED|ERROR)" "$root/pytest.txt" | sed 's/^/  /' | head -50
tail -n 1 "$root/pytest.txt"
if [ $rc -eq 0 ]; then
  echo "drift: nothing broke; refresh with: bash .ci/refresh_lock.sh"
else
  echo "drift: the failures above break on the newest versions; fix or pin before refreshing"
fi
exit $rc
