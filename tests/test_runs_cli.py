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


@pytest.mark.parametrize("source, match", [
    ("notes.txt", "is a file curate does not read: pass an image folder"),
    ("mnist5k:foo", "'mnist5k' is one of this package's datasets and has no config or version"),
    ("mnist", "is a TFDS catalog dataset that is not prepared under"),
    ("nosuchdataset", "is neither a file or folder nor a known dataset"),
    ("mismatch.npz", "features (10, 3) and labels (9,) do not match"),
    ("oneclass.npz", "'oneclass.npz' has 1 class with samples"),
])
def test_a_bad_curate_source_is_exactly_one_line_and_leaves_nothing(tmp_path, source, match):
  """Not a traceback, no log lines, no download tried (a fresh HOME without TFDS data: the
  catalog name fails at once), no workdir and no TFDS folder left behind; the same for the
  errors found once JAX has started (labels of another length, one class)."""
  import numpy as np
  (tmp_path / "notes.txt").write_text("hello\n")
  np.savez(tmp_path / "mismatch.npz", features=np.ones((10, 3), np.float32),
           labels=np.arange(9) % 2)
  np.savez(tmp_path / "oneclass.npz", features=np.ones((10, 3), np.float32),
           labels=np.zeros(10, int))
  home = tmp_path / "home"
  home.mkdir()
  env_home = dict(os.environ, HOME=str(home))
  env_home.pop("TFDS_DATA_DIR", None)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.curate", f"--workdir={tmp_path / 'wd'}",
       f"--config.source={source}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env=dict(env_home, PYTHONPATH=os.pathsep.join(
          [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])))
  _assert_one_line_error(proc, match)
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not (tmp_path / "wd").exists()
  assert list(home.rglob("*")) == [], list(home.rglob("*"))


def test_the_binaries_print_no_log_lines_unless_asked(tmp_path):
  """A successful run's stderr holds no INFO lines (JAX's backend probe, the stages) by
  default; --verbosity=0 brings them back."""
  import numpy as np
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 120)
  np.savez(tmp_path / "e.npz", features=(rng.normal(size=(120, 6)) + 3 * np.eye(3, 6)[labels])
           .astype(np.float32), labels=labels)
  args = ["-m", "experiments.curate", "--config.source=e.npz"]
  quiet = _run(args + [f"--workdir={tmp_path / 'q'}"], cwd=tmp_path)
  assert quiet.returncode == 0, quiet.stderr[-2000:]
  info = [ln for ln in quiet.stderr.splitlines() if ln.startswith("I")]
  assert not info, quiet.stderr[-2000:]
  loud = _run(args + [f"--workdir={tmp_path / 'l'}", "--verbosity=0"], cwd=tmp_path)
  assert loud.returncode == 0, loud.stderr[-2000:]
  assert any(ln.startswith("I") for ln in loud.stderr.splitlines()), loud.stderr[-2000:]


def test_a_packaged_variant_by_name_alone(tmp_path):
  """`--config=:pixels` means the binary's own config file with that variant (what
  `diva-curate` users write, having no configs/ folder)."""
  import json
  import numpy as np
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 60)
  np.savez(tmp_path / "e.npz", features=rng.normal(size=(60, 4)).astype(np.float32),
           labels=labels)
  proc = _run(["-m", "experiments.curate", f"--workdir={tmp_path / 'w'}", "--config=:pixels",
               "--config.source=e.npz", "--config.report_grid=7"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cfg = json.loads((tmp_path / "w" / "config.json").read_text())
  assert cfg["backbone"] == "pixels" and cfg["report_grid"] == 7
  bad = _run(["-m", "experiments.curate", f"--workdir={tmp_path / 'b'}", "--config=:nosuch",
              "--config.source=e.npz"], cwd=tmp_path)
  _assert_one_line_error(bad, "nosuch")
