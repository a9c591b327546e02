"""Scale-out helpers (diva_jax.parallel.multihost) in one process, the distributed flags' errors,
and the scale-out and device benchmarks on tiny sizes (their numbers are measured, not
asserted: only their structure and invariants)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diva_jax.parallel import multihost as distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("n,p", [(10, 1), (10, 2), (11, 2), (7, 3), (2, 5), (4000, 8)])
def test_row_ranges_cover_the_rows_contiguously_and_evenly(n, p):
  ranges = [distributed.row_range(n, i, p) for i in range(p)]
  assert ranges[0][0] == 0 and ranges[-1][1] == n
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  sizes = [b - a for a, b in ranges]
  assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_single_process_collectives_are_identities():
  assert distributed.process_count() == 1 and distributed.process_index() == 0
  assert distributed.broadcast_bytes(b"abc") == b"abc"
  assert distributed.allgather_bytes(b"xy") == [b"xy"]
  np.testing.assert_array_equal(distributed.allgather_ints([3, 4]), [[3, 4]])
  x = np.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(distributed.gather_rows(x, 6), x)
  arrays = {"a": np.arange(3), "b": np.ones((2, 2), np.float32)}
  back = distributed.load_npz_bytes(distributed.save_npz_bytes(arrays))
  assert set(back) == {"a", "b"} and back["b"].dtype == np.float32
  distributed.barrier("no-op")
  with distributed.local():
    assert distributed.process_count() == 1 and len(distributed.devices()) >= 1


def test_initialize_refuses_a_partial_set_of_arguments():
  with pytest.raises(ValueError, match="all three or none"):
    distributed.initialize("127.0.0.1:1234", None, None)
  with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
    distributed.initialize("127.0.0.1:1234", 2, 2)


def test_sharded_derivative_on_one_device_is_the_host_path():
  import diva_jax
  rng = np.random.default_rng(0)
  z = rng.normal(size=(40, 6))
  y = np.eye(3)[rng.integers(0, 3, 40)]
  w = np.ones(40)
  value, deriv = distributed.sharded_loo_loss_and_derivative(w, y, features=z, reg=0.5, loss="ce")
  ref = diva_jax.loo_loss_and_derivative(w, y, features=z, reg=0.5, loss="ce")
  assert value == pytest.approx(float(ref.value), rel=1e-12)
  np.testing.assert_allclose(deriv, np.asarray(ref.derivative), rtol=1e-10, atol=1e-14)
  with pytest.raises(ValueError, match="targets"):
    distributed.sharded_loo_loss_and_derivative(w, y[:-1], features=z, reg=0.5)


def test_binary_refuses_partial_distributed_flags_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.outlier_rejection", f"--workdir={tmp_path / 'w'}",
       "--num_processes=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  err = out.stderr.strip().splitlines()
  assert err[-1].startswith("error: --coordinator_address, --num_processes and --process_id")
  assert not (tmp_path / "w").exists()


def test_device_benchmark_tiny(tmp_path):
  from experiments.benchmarks import device_benchmark
  out = device_benchmark.run(str(tmp_path), matmul_m=128, images=70, batch_size=32,
                             sizes=(300,), d=16, c=3, repeats=1)
  stored = json.loads((tmp_path / "device_benchmark.json").read_text())
  assert stored["features"]["images"] == 70 and stored["features"]["images_per_s"] > 0
  assert [m["dtype"] for m in out["matmul"]] == ["float32", "bfloat16"]
  d = out["derivative"][0]
  assert d["n"] == 300 and d["gflop"] == pytest.approx(4 * 300 * 16 * 16 / 1e9)


@pytest.mark.slow
def test_scaling_benchmark_tiny(tmp_path):
  from experiments.benchmarks import scaling_benchmark
  out = scaling_benchmark.run(
      str(tmp_path), max_images=48, batch_size=16,
      run_config="configs/outlier_rejection.py:runlocal,pixels",
      run_args=("--config.max_train=120", "--config.max_test=40", "--config.baselines=False",
                "--config.plots=False"))
  f = out["features"]
  assert f["1_process"]["rows_embedded_per_process"] == [48]
  assert f["2_process"]["rows_embedded_per_process"] == [24, 24]
  assert f["efficiency_features_s"] > 0
  r = out["run"]
  assert r["1_process"]["parallelism"]["processes"] == 1
  assert r["2_process"]["parallelism"]["processes"] == 2
  assert r["1_process"]["detection_f1"] == pytest.approx(r["2_process"]["detection_f1"])
  assert os.path.exists(tmp_path / "scaling_benchmark.json")
