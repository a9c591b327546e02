"""The experiment binaries over several devices and processes (issue: scale out).

Real runs, no mocks: `python -m experiments.outlier_rejection` as 2 processes on loopback
(jax.distributed, gloo collectives), as one process with 8 fake CPU devices, and as one
process with one device; a 2-process sweep against the 1-process run; a killed 2-process run
restarted. Every run is a subprocess (device counts and jax.distributed are per process),
so this module changes nothing in the test process.

The runs are the `:runlocal` outlier rejection (real MNIST, EfficientNet-Lite0 at 64 px)
cut to 240 training and 90 test images, without the 5-fold CV baseline, to keep the suite
short; the code paths are the full job's.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import loopback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "outlier_rejection.py") + ":runlocal"
SMALL = ["--config.max_train=240", "--config.max_test=90", "--config.cv_logistic=False",
         "--config.plots=False"]
_TIMEOUT_S = 300


def _env(devices: int = 1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("JAX_ENABLE_X64", None)
  return env


def _start(module, args, nproc=1, devices=1):
  """Starts `nproc` processes of `python -m module args` (a jax.distributed job if > 1)."""
  port = loopback.free_port()
  procs = []
  for i in range(nproc):
    dist = loopback.distributed_flags(port, nproc, i) if nproc > 1 else []
    procs.append(subprocess.Popen(
        [sys.executable, "-m", module] + dist + args + ["--verbosity=0"], cwd=REPO,
        env=_env(devices),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def _wait(procs, timeout=_TIMEOUT_S):
  return loopback.wait(procs, timeout)


def _run(workdir, *extra, nproc=1, devices=1, module="experiments.outlier_rejection"):
  args = [f"--config={CONFIG}", f"--workdir={workdir}"] + SMALL + list(extra)
  return _wait(_start(module, args, nproc, devices))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def _comparable(m):
  """metrics.json without what legitimately differs between runs: wall times and the
  parallelism record."""
  drop = lambda d: {k: v for k, v in d.items() if k not in ("seconds", "parallelism")}
  out = drop(m)
  out["baselines"] = {k: drop(v) for k, v in m["baselines"].items()}
  return out


def _assert_same_metrics(a, b, rtol=1e-4):
  """Equal keys and discrete values; floats to float32 tolerance."""
  a, b = _comparable(a), _comparable(b)

  def walk(x, y, path):
    if isinstance(x, dict):
      assert set(x) == set(y), path
      for k in x:
        walk(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list):
      assert len(x) == len(y), path
      for i, (u, v) in enumerate(zip(x, y)):
        walk(u, v, f"{path}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
      assert x == pytest.approx(y, rel=rtol, abs=1e-6), path
    else:
      assert x == y, path

  walk(a, b, "metrics")


def _flagged(workdir):
  import csv
  with open(os.path.join(workdir, "per_sample.csv")) as f:
    return [row["selected"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The 1-process, 1-device run (its own feature cache)."""
  wd = tmp_path_factory.mktemp("dist") / "one"
  _run(wd)
  return wd


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(reference, tmp_path):
  wd = tmp_path / "two"
  logs = _run(wd, nproc=2)
  m, ref = _metrics(wd), _metrics(reference)
  _assert_same_metrics(m, ref)
  assert _flagged(wd) == _flagged(reference)
  assert m["parallelism"] == {"processes": 2, "devices": 2,
                              "rows_embedded_per_process": [645, 645]}
  assert ref["parallelism"] == {"processes": 1, "devices": 1,
                                "rows_embedded_per_process": [1290]}
  for i, log in enumerate(logs):  # each process embedded its half of each split, and said so
    assert f"embedded 120 of 240 rows on process {i} of 2" in log
    assert f"embedded 45 of 90 rows on process {i} of 2" in log
  assert "process 0 of 2: writes the outputs to" in logs[0]
  assert "process 1 of 2: writes nothing (process 0 writes)" in logs[1]
  assert "writes the outputs" not in logs[1]
  assert "== outlier rejection" in logs[0] and "== outlier rejection" not in logs[1]
  # The feature cache does not depend on the process count: the 2-process run wrote the
  # same files, keys and (to float32 tolerance) arrays as the 1-process run, so either run
  # loads the other's (the restart test runs a 2-process job on the 1-process cache).
  _assert_same_cache(wd / "cache", reference / "cache")


def _assert_same_cache(a, b):
  """The same cache files; each of a's passes the library's validated read with b's key
  (what a run configured like b's checks before it reuses a file) and holds b's features."""
  from diva_jax.features import extract
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b)) and any(n.endswith(".npz") for n in names), names
  for name in names:
    with np.load(b / name) as z:
      key = json.loads(str(z["key"]))
      want = z["features"]
    got = extract.read_feature_cache(a / name, expected_key=key)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_eight_fake_devices_match_one_device(reference, tmp_path):
  wd = tmp_path / "eight"
  _run(wd, devices=8)
  m = _metrics(wd)
  assert m["parallelism"] == {"processes": 1, "devices": 8,
                              "rows_embedded_per_process": [1290]}
  _assert_same_metrics(m, _metrics(reference))
  assert _flagged(wd) == _flagged(reference)


@pytest.mark.slow
def test_killed_process_restarted_resumes_from_saved_stages(reference, tmp_path):
  wd = tmp_path / "killed"
  # On the 1-process run's feature cache: a 2-process run reuses it.
  args = ([f"--config={CONFIG}", f"--workdir={wd}", f"--config.cache_dir={reference / 'cache'}"]
          + SMALL)
  procs = _start("experiments.outlier_rejection", args, nproc=2)
  stage = wd / "stages" / "label_issues.npz"
  deadline = time.time() + _TIMEOUT_S
  while not stage.exists() and time.time() < deadline and procs[0].poll() is None:
    time.sleep(0.05)
  assert stage.exists(), "the derivative stage was never written"
  procs[1].send_signal(signal.SIGKILL)  # one process dies mid-run...
  time.sleep(0.5)
  procs[0].send_signal(signal.SIGKILL)  # ...and the job is torn down (restart both)
  for p in procs:
    p.communicate()
  assert not (wd / "metrics.json").exists(), "the kill landed after the run finished"
  logs = _wait(_start("experiments.outlier_rejection", args, nproc=2))
  assert "stage label_issues: loaded" in logs[0] and "stage label_issues: loaded" in logs[1]
  assert _metrics(wd)["parallelism"]["rows_embedded_per_process"] == [0, 0]  # cached
  _assert_same_metrics(_metrics(wd), _metrics(reference))


@pytest.mark.slow
def test_two_process_sweep_runs_each_point_once_like_one_process(reference, tmp_path):
  # Point 0 is the reference run's config (noise_rate 0.2): the same metrics. Point 1 runs on
  # the other process.
  cfg = tmp_path / "sweep2.py"
  cfg.write_text(
      "import configs.outlier_rejection as base\n"
      "def get_config(arg=None):\n"
      "  return base.get_config('runlocal')\n"
      "def get_hyper(h):\n"
      "  return h.product([h.sweep('config.noise_rate', [0.2, 0.3]),\n"
      "                    h.sweep('config.loss', ['ce'])])\n")
  extra = ["--"] + SMALL
  base = [f"--config={cfg}", "--binary=experiments.outlier_rejection"]
  logs = _wait(_start("experiments.sweep", base + [f"--workdir={tmp_path / 'pod'}"] + extra,
                      nproc=2))
  runs = sorted(os.listdir(tmp_path / "pod"))
  points = [r for r in runs if r[:3].isdigit()]
  assert len(points) == 2
  # Each point ran exactly once, on process i mod 2.
  for i in range(2):
    ran = [log.count(f"sweep point {i} (") for log in logs]
    assert ran == ([1, 0] if i % 2 == 0 else [0, 1]), (i, ran)
    assert f"sweep point {i} (" in logs[i % 2] and "returncode 0" in logs[i % 2]
  # Features were extracted once for the whole sweep, split over the 2 processes.
  for i, log in enumerate(logs):
    assert f"embedded 120 of 240 rows on process {i} of 2" in log
  # The same results as one process; one sweep.csv, written by process 0.
  ref = _metrics(reference)
  _assert_same_metrics(_metrics(tmp_path / "pod" / points[0]), ref)
  m1 = _metrics(tmp_path / "pod" / points[1])
  assert m1["noise_rate"] == 0.3 and m1["num_noisy"] == 72
  import csv
  with open(tmp_path / "pod" / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert (tmp_path / "pod" / "sweep.png").exists()
  assert [r["run"] for r in rows] == points
  assert [r["returncode"] for r in rows] == ["0", "0"]
  assert float(rows[0]["detection_f1"]) == pytest.approx(ref["detection_f1"], rel=1e-4)
  assert float(rows[1]["detection_f1"]) == pytest.approx(m1["detection_f1"], rel=1e-6)
  # Restarted, the sweep skips every finished point.
  again = _wait(_start("experiments.sweep", base + [f"--workdir={tmp_path / 'pod'}"] + extra,
                       nproc=2))
  assert sum(log.count("(finished before)") for log in again) == 2
  assert np.all([("embedded" not in log) for log in again])
