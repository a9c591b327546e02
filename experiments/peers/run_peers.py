#!/usr/bin/env python
"""Run peer data-valuation methods (pyDVL 0.10, valda) on data passed through files.

Runs in its own virtual env (see setup_venv.sh: pyDVL pins numpy<2), so it imports
only numpy, scikit-learn, pydvl, valda and the standard library -- never diva_jax
or jax.

  python run_peers.py --input IN.npz --output OUT.json \
    [--methods knn_shapley,data_oob,mc_shapley,valda_tmc,valda_beta] \
    [--time_budget_s 60] [--seed 0] [--smoke]

IN.npz: x_train [n,d] float, y_train [n] int, x_val [m,d] float, y_val [m] int,
optional k (int, neighbours for knn_shapley, default 10).

OUT.json (written atomically, rewritten after every method):
  {"versions": {"pydvl", "numpy", "sklearn", "valda" (or null)},
   "input": {"path", "n", "m", "d", "k", "n_classes"},
   "methods": {name: {"values": [n floats] | null, "seconds": float,
            "error": null | "one line", "settings": {...}}}}
Values: higher = more valuable, one per training sample, in input order.

--smoke ignores --input, values a tiny two-blob dataset with 6 flipped labels
and exits non-zero unless every available method returns n finite values and,
for knn_shapley and data_oob, flipped samples score lower on average than clean
ones.
"""

from __future__ import annotations

import os

# One BLAS thread per process: the machines have 2 cores and BLAS threads
# fighting joblib workers (or another job) slow small fits down 10-50x.
# tqdm progress bars (valda prints them unconditionally) are switched off.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# pyDVL's deprecation helper warns at import time, also in joblib workers.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from peer_methods import RUNNERS  # noqa: E402  (this script's folder is on sys.path)
from peer_methods import BudgetSkip  # noqa: E402,F401
from peer_methods import OOB_DEFAULT_ESTIMATORS  # noqa: E402
from peer_methods import OOB_PAPER_ESTIMATORS  # noqa: E402
from peer_methods import _version  # noqa: E402
from peer_methods import log  # noqa: E402
from peer_methods import one_line  # noqa: E402
from peer_methods import valda_status  # noqa: E402

ALL_METHODS = ("knn_shapley", "data_oob", "mc_shapley", "valda_tmc", "valda_beta")


def versions() -> dict:
  ok, _ = valda_status()
  return {
      "pydvl": _version("pyDVL"),
      "numpy": np.__version__,
      "sklearn": _version("scikit-learn"),
      "valda": _version("valda") if ok else None,
      "python": sys.version.split()[0],
  }


def write_json_atomic(path: str, payload: dict) -> None:
  out_dir = os.path.dirname(os.path.abspath(path))
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp_peers_", suffix=".json", dir=out_dir)
  try:
    with os.fdopen(fd, "w") as fh:
      json.dump(payload, fh, allow_nan=False)
      fh.write("\n")
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


# --------------------------------------------------------------------------- models


def to_array(result, n: int) -> np.ndarray:
  """pyDVL ValuationResult (any order) or array -> float array in data order."""
  if isinstance(result, np.ndarray):
    return result.astype(float)
  out = np.full(n, np.nan)
  out[np.asarray(result.indices, dtype=int)] = np.asarray(result.values, dtype=float)
  return out


def run_method(name: str, data: dict, args) -> dict:
  n = len(data["y_train"])
  ctx: dict = {"settings": {}}
  t0 = time.perf_counter()
  values, error = None, None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      arr = to_array(RUNNERS[name](data, args, ctx), n)
    bad = int((~np.isfinite(arr)).sum())
    values = [float(v) if math.isfinite(v) else None for v in arr]
    if bad:
      error = f"{bad} of {n} values are not finite"
  except BudgetSkip as exc:
    error = " ".join(str(exc).split())[:500]
  except Exception as exc:
    error = one_line(exc)
  seconds = time.perf_counter() - t0
  log(f"{name}: {seconds:.1f}s " + ("ok" if error is None else f"error: {error}"))
  return {
      "values": values,
      "seconds": round(seconds, 3),
      "error": error,
      "settings": ctx["settings"]
  }


# ---------------------------------------------------------------------------- data


def load_input(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    x_train = np.asarray(f["x_train"], dtype=np.float64)
    y_train = np.asarray(f["y_train"]).astype(np.int64)
    x_val = np.asarray(f["x_val"], dtype=np.float64)
    y_val = np.asarray(f["y_val"]).astype(np.int64)
    k = int(f["k"]) if "k" in f.files else 10
  if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
    raise ValueError(f"bad shapes: x_train {x_train.shape}, x_val {x_val.shape}")
  if len(y_train) != len(x_train) or len(y_val) != len(x_val):
    raise ValueError("x/y length mismatch")
  return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "k": k}


def smoke_data(seed: int = 0) -> tuple[dict, np.ndarray]:
  rng = np.random.default_rng(1234)
  d = 5
  centers = np.zeros((2, d))
  centers[0, 0], centers[1, 0] = -2.0, 2.0

  def blobs(count, n_flip):
    y = np.arange(count) % 2
    x = centers[y] + rng.normal(size=(count, d))
    flip = np.zeros(count, dtype=bool)
    flip[rng.choice(count, size=n_flip, replace=False)] = True
    return x, np.where(flip, 1 - y, y), flip

  x_train, y_train, flipped = blobs(60, 6)
  x_val, y_val, _ = blobs(40, 4)
  return ({"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "k": 5}, flipped)


# ---------------------------------------------------------------------------- main


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--input", help="IN.npz (ignored with --smoke)")
  p.add_argument("--output", help="OUT.json (optional with --smoke)")
  p.add_argument("--methods",
                 default=",".join(ALL_METHODS),
                 help=f"comma-separated subset of {','.join(ALL_METHODS)}")
  p.add_argument("--time_budget_s",
                 type=float,
                 default=60.0,
                 help="wall-time budget of each Monte-Carlo method")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--n_jobs",
                 type=int,
                 default=2,
                 choices=(1, 2),
                 help="joblib workers for knn_shapley and data_oob")
  p.add_argument("--oob_estimators",
                 type=int,
                 default=OOB_DEFAULT_ESTIMATORS,
                 help=f"trees in the Data-OOB forest (paper: {OOB_PAPER_ESTIMATORS})")
  p.add_argument("--mc_model",
                 default="centroid",
                 choices=("centroid", "logreg"),
                 help="model retrained by mc_shapley / valda_* (centroid: "
                 "NearestCentroid; logreg: LogisticRegression(max_iter=20))")
  p.add_argument("--max_overrun",
                 type=float,
                 default=3.0,
                 help="skip a Monte-Carlo method whose smallest possible run is "
                 "estimated to take more than this many time budgets")
  args = p.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(ALL_METHODS))
  if unknown:
    p.error(f"unknown methods: {unknown}")
  args.methods = methods
  if not args.smoke and (not args.input or not args.output):
    p.error("--input and --output are required (unless --smoke)")
  if args.time_budget_s <= 0:
    p.error("--time_budget_s must be > 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  flipped = None
  if args.smoke:
    data, flipped = smoke_data()
    args.time_budget_s = min(args.time_budget_s, 3.0)
    args.oob_estimators = min(args.oob_estimators, 200)
    args.n_jobs = 1  # joblib worker start-up would dominate at n=60
    source = "smoke"
  else:
    data = load_input(args.input)
    source = os.path.abspath(args.input)
  n, d = data["x_train"].shape
  payload = {
      "versions": versions(),
      "input": {
          "path": source,
          "n": int(n),
          "m": int(len(data["y_val"])),
          "d": int(d),
          "k": int(data["k"]),
          "n_classes": int(len(np.unique(data["y_train"])))
      },
      "methods": {},
  }
  log(f"versions {payload['versions']}; n={n} d={d} methods={args.methods}")
  for name in args.methods:
    payload["methods"][name] = run_method(name, data, args)
    if args.output:
      write_json_atomic(args.output, payload)
  if not args.smoke:
    return 0
  return smoke_report(payload, flipped)


def smoke_report(payload: dict, flipped: np.ndarray) -> int:
  valda_ok, why = valda_status()
  failures = 0
  for name, res in payload["methods"].items():
    if name.startswith("valda") and not valda_ok:
      print(f"SMOKE {name}: unavailable ({why})")
      continue
    vals = res["values"]
    if res["error"] is not None or vals is None or len(vals) != len(flipped) \
        or any(v is None for v in vals):
      print(f"SMOKE {name}: FAIL ({res['error']})")
      failures += 1
      continue
    arr = np.asarray(vals)
    low, high = arr[flipped].mean(), arr[~flipped].mean()
    must_rank = name in ("knn_shapley", "data_oob")
    good = low < high or not must_rank
    failures += not good
    print(f"SMOKE {name}: {'ok' if good else 'FAIL'} {res['seconds']:.1f}s "
          f"mean(flipped)={low:.4g} mean(clean)={high:.4g}" +
          ("" if must_rank else " (ranking not checked)"))
  print(f"SMOKE {'PASSED' if failures == 0 else f'FAILED ({failures})'}")
  return 0 if failures == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
