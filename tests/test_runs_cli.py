"""The binaries' command line: one-line errors for bad input (exit 2, no traceback, no usage
dump), tracebacks for everything else, the default config found from any directory."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "--config=" + os.path.join(REPO, "configs", "{}.py") + ":digits,pixels"


def _run(args, cwd, timeout=120):
  # The repository on the path (the binaries and configs are not installed packages), the
  # working directory elsewhere.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _assert_one_line_error(proc, match):
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and match in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "USAGE" not in proc.stderr and "flags:" not in proc.stderr


@pytest.mark.parametrize("binary, args, match", [
    ("outlier_rejection", ["--workdir={file}"], "is not a directory"),
    ("outlier_rejection", ["--workdir="], "--workdir must name a directory"),
    ("outlier_rejection", ["--workdir={wd}", "--config.nosuchkey=1"],
     "--config.nosuchkey: the config has no such field"),
    ("outlier_rejection", ["--workdir={wd}", "--config.detection_reg_multiplier=-1"],
     "detection_reg_multiplier must be a finite number >= 0"),
    ("outlier_rejection", ["--workdir={wd}", "--config.noise_rate=1.5"], "noise_rate must be"),
    ("dataset_extension", ["--workdir={wd}", "--config.uniform_repeats=0"],
     "uniform_repeats must be an integer >= 1"),
    ("multimodal_aggregation", ["--workdir={wd}", "--config.budget=2.5"], "config.budget"),
])
def test_bad_input_is_one_line(tmp_path, binary, args, match):
  """Our validation errors are one line on stderr, exit 2, nothing
  written. Run from another directory with an absolute --config."""
  (tmp_path / "afile").write_text("")
  args = [a.format(file=tmp_path / "afile", wd=tmp_path / "wd") for a in args]
  proc = _run(["-m", f"experiments.{binary}", DIGITS.format(binary)] + args, cwd=tmp_path)
  _assert_one_line_error(proc, match)
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("binary, key", [("curate", "soruce"), ("outlier_rejection", "datset")])
def test_config_key_typo_without_config_flag_is_one_line(tmp_path, binary, key):
  """Without --config the default file is loaded at flag definition: a mistyped override
  there is the same one-line error, with ml_collections' suggestion."""
  proc = _run(["-m", f"experiments.{binary}", f"--workdir={tmp_path / 'wd'}",
               f"--config.{key}=x"], cwd=tmp_path)
  _assert_one_line_error(proc, f"--config.{key}: the config has no such field (Did you mean")
  assert not (tmp_path / "wd").exists()


def test_default_config_is_found_from_any_directory(tmp_path):
  """No --config, cwd outside the repository: the default config loads (the run
  then stops at the bad value, before writing anything)."""
  proc = _run(["-m", "experiments.outlier_rejection", f"--workdir={tmp_path / 'wd'}",
               "--config.reg=-1"], cwd=tmp_path)
  _assert_one_line_error(proc, "reg must be a finite number >= 0, got -1.0")


def test_other_errors_keep_their_traceback(tmp_path):
  """A ValueError that is not our input validation (here NumPy's) propagates with
  its traceback instead of becoming a usage message."""
  script = tmp_path / "bin.py"
  script.write_text(textwrap.dedent(f"""
      import numpy as np
      from diva_jax.app import cli
      def run(config, workdir, overwrite=False):
        np.concatenate([np.zeros((2, 3)), np.zeros((2, 4))])
      cli.define_and_run({os.path.join(REPO, "configs", "outlier_rejection.py")!r}, run)
      """))
  proc = _run([str(script), f"--workdir={tmp_path / 'wd'}"], cwd=tmp_path)
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "ValueError" in proc.stderr
  assert "concatenate" in proc.stderr and "error: " not in proc.stderr.splitlines()[-1][:7]
