"""The valuation benchmark's peers (pyDVL, valda) in their own venv (`experiments/peers/`:
pyDVL pins numpy < 2): the venv made on first use with the shipped script and smoke-tested
once per process, then one `run_peers.py` process per call."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np

from experiments.lib import ROOT

PEERS = {"pydvl_knn_shapley": "knn_shapley", "pydvl_data_oob": "data_oob",
         "pydvl_mc_shapley": "mc_shapley", "valda_tmc": "valda_tmc", "valda_beta": "valda_beta"}
SLOW_PEERS = ("pydvl_mc_shapley", "valda_tmc", "valda_beta")
PEER_DIR = os.path.join(ROOT, "experiments", "peers")


def peer_python(config) -> str:
  return os.path.join(config.peer_venv or os.path.expanduser(
      os.path.join("~", ".cache", "diva_jax", "peer_venv")), "bin", "python")


def _ensure_peer_venv(config) -> str:
  """The peers' interpreter, creating their venv with the shipped script if missing."""
  py = peer_python(config)
  if not os.path.exists(py):
    venv = os.path.dirname(os.path.dirname(py))
    proc = subprocess.run(["bash", os.path.join(PEER_DIR, "setup_venv.sh"), venv],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(py):
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(f"creating the peers' venv in {venv} failed: {tail[0]}")
  if py not in _SMOKED:  # the venv's own smoke test, once per process
    proc = subprocess.run([py, os.path.join(PEER_DIR, "run_peers.py"), "--smoke"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(f"the peers' smoke test failed in {py}: {tail[0]}")
    _SMOKED.add(py)
  return py


_SMOKED = set()


def run_peers(methods, x, noisy, xv, yv, config, seed):
  """{method: {values, seconds, error, settings}} from the peers' venv, one process."""
  try:
    py = _ensure_peer_venv(config)
  except RuntimeError as e:
    return {m: {"values": None, "seconds": None, "error": str(e)} for m in methods}, {}
  with tempfile.TemporaryDirectory() as tmp:
    inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.json")
    np.savez(inp, x_train=np.asarray(x, np.float64), y_train=noisy,
             x_val=np.asarray(xv, np.float64), y_val=yv, k=int(config.knn))
    cmd = [py, os.path.join(PEER_DIR, "run_peers.py"), "--input", inp, "--output", out,
           "--methods", ",".join(PEERS[m] for m in methods),
           "--time_budget_s", str(float(config.peer_time_budget_s)), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      return {m: {"values": None, "seconds": None,
                  "error": f"run_peers.py failed: {tail[0]}"} for m in methods}, {}
    with open(out) as f:
      res = json.load(f)
  by_peer = res["methods"]
  return {m: by_peer.get(PEERS[m], {"values": None, "seconds": None,
                                    "error": "not returned"}) for m in methods}, res["versions"]
