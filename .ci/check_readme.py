"""The README's printed figures against what its commands print, number for number.

  python .ci/check_readme.py [--workdir=DIR]

Runs the main job (`python -m experiments.outlier_rejection`, the README's set-up command) and
its `:runlocal` variant, then checks that every line of the README block after "The main job
prints" appears in the job's output with the same numbers (wall times, "in 4.43s", excepted:
they vary by machine), and that the F1 and AUROC the README quotes for `:runlocal` are what
`:runlocal` prints. Exits 1 naming the first mismatch. CI runs it (.ci/run).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIME = re.compile(r"\bin \d+(\.\d+)?s\b")


def readme_block(text):
  """(the printed block's lines, the :runlocal F1 and AUROC the README quotes)."""
  m = re.search(r"The main job prints \(`:runlocal` gives F1 ([\d.]+), AUROC ([\d.]+)\):\n\n```\n"
                r"(.*?)\n```", text, re.S)
  if not m:
    raise SystemExit("README.md: no 'The main job prints (`:runlocal` gives F1 .., AUROC ..):' "
                     "block")
  return m.group(3).splitlines(), (m.group(1), m.group(2))


def numbers(line):
  return re.findall(r"-?\d+(?:\.\d+)?%?", _TIME.sub("", line))


def run(args, workdir):
  proc = subprocess.run([sys.executable, "-m", "experiments.outlier_rejection",
                         f"--workdir={workdir}"] + args, cwd=ROOT, capture_output=True,
                        text=True)
  if proc.returncode != 0:
    raise SystemExit(f"the main job failed:\n{proc.stderr[-3000:]}")
  return proc.stdout


def check(block, out):
  lines = out.splitlines()
  for want in block:
    key = want.split(":")[0].split("F1")[0].strip()
    got = [ln for ln in lines if ln.strip().startswith(key)]
    if not got:
      return f"README line {want!r}: the job printed no line starting {key!r}"
    if numbers(got[0]) != numbers(want):
      return f"README says {want.strip()!r}\n  the job prints {got[0].strip()!r}"
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None)
  a = p.parse_args()
  with open(os.path.join(ROOT, "README.md")) as f:
    block, (f1, auroc) = readme_block(f.read())
  wd = a.workdir or tempfile.mkdtemp(prefix="diva_readme_")
  bad = check(block, run([], os.path.join(wd, "main")))
  if bad:
    raise SystemExit(f"README.md main-job block: {bad}")
  local = run(["--config=configs/outlier_rejection.py:runlocal"], os.path.join(wd, "local"))
  first = [ln for ln in local.splitlines() if ln.startswith("DIVA derivative:")]
  m = re.search(r"F1 ([\d.]+) .*AUROC ([\d.]+)", first[0]) if first else None
  if not m or (m.group(1), m.group(2)) != (f1, auroc):
    raise SystemExit(f"README.md says `:runlocal` gives F1 {f1}, AUROC {auroc}; it prints "
                     f"{first[0] if first else 'no DIVA derivative line'!r}")
  print(f"README.md: the main-job block ({len(block)} lines) and the :runlocal figures match")


if __name__ == "__main__":
  main()
