"""The streamed default rule over processes: two processes on loopback (jax.distributed,
gloo), each reading only its share of a .npy's rows, return the one-process result."""
import os
import subprocess
import sys

import numpy as np
import pytest

import diva_jax
from diva_jax.parallel import multihost

import loopback

_WORKER = os.path.join(os.path.dirname(__file__), "streamed_rule_worker.py")
_TIMEOUT_S = 180


def _problem(n, d, c, seed):
  rng = np.random.default_rng(seed)
  clean = rng.integers(0, c, n)
  x = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[clean]
  y = clean.copy()
  flip = rng.random(n) < 0.2
  y[flip] = (clean[flip] + rng.integers(1, c, flip.sum())) % c
  return x.astype(np.float32), y


@pytest.mark.slow
@pytest.mark.parametrize("n, d, c, block, reg_rows", [
    (1500, 12, 3, 333, 32768),   # every row chooses reg
    (2400, 30, 10, 257, 700),    # a reg-row subset spread over both processes
])
def test_two_processes_give_the_one_process_result(tmp_path, n, d, c, block, reg_rows):
  x, y = _problem(n, d, c, seed=n)
  feats, labels = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
  np.save(feats, x)
  np.save(labels, y)
  ref = diva_jax.find_label_issues(y, features=feats, block_size=block, reg_rows=reg_rows)
  port = loopback.free_port()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  out = str(tmp_path / "out")
  procs = [subprocess.Popen([sys.executable, _WORKER, str(i), "2", str(port), feats, labels,
                             str(block), str(reg_rows), out], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  loopback.wait(procs, _TIMEOUT_S, tail=4000)
  for pid in range(2):
    r = np.load(f"{out}{pid}.npz")
    np.testing.assert_array_equal(r["flagged"], ref.flagged)
    assert int(r["num_issues"]) == ref.num_issues
    # the same grid point; the scale trace(G) / n summed in another order may differ in its
    # last bit
    assert float(r["reg"]) == pytest.approx(ref.reg, rel=1e-12)
    assert float(r["detection_reg"]) == pytest.approx(ref.detection_reg, rel=1e-12)
    np.testing.assert_allclose(r["derivative"], ref.derivative, rtol=1e-5,
                               atol=1e-6 * np.abs(ref.derivative).max())
    np.testing.assert_allclose(r["probs"], ref.loo_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r["suggested"], ref.suggested_labels)
    np.testing.assert_allclose(float(r["loo_loss"]), ref.loo_loss, rtol=1e-10)
    # Each process read only its own rows, each of them once per pass.
    lo, hi = multihost.row_range(n, pid, 2)
    reads = r["reads"]
    assert reads[:, 0].min() >= lo and reads[:, 1].max() <= hi, (lo, hi, reads[:3])
    assert int(np.sum(reads[:, 1] - reads[:, 0])) == 3 * (hi - lo)
