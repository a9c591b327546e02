"""A real multi-process run: 2 processes x 2 CPU devices on loopback (gloo)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np

import loopback

_WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_gram_worker.py")
_TIMEOUT_S = 120


def _load_worker():
  """The worker module, for ``problem()``; importing it changes no global state."""
  spec = importlib.util.spec_from_file_location("_multiprocess_gram_worker",
                                                _WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_two_process_sharded_gram_equals_single_process(tmp_path):
  worker = _load_worker()
  out = tmp_path / "gram.npz"
  port = loopback.free_port()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  procs = [
      subprocess.Popen(
          [sys.executable, _WORKER, str(i), "2", str(port), str(out)],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  loopback.wait(procs, _TIMEOUT_S, tail=4000)
  res = np.load(out)
  assert int(res["devices"]) == 4
  z, a, y = worker.problem()
  np.testing.assert_allclose(res["g"], z.T @ (a[:, None] * z), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(res["b"], z.T @ (a[:, None] * y), rtol=1e-12,
                             atol=1e-12)
