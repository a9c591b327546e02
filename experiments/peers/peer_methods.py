"""The peer valuation methods run by run_peers.py (pyDVL 0.10's KNN-Shapley, Data-OOB and
Monte-Carlo Shapley; valda's TMC-Shapley and Beta-Shapley), each `run_<name>(data, args, ctx)`
returning [n] values (higher = more valuable); the cheap models they refit and the budget
check. Imports only numpy, scikit-learn, pydvl, valda and the standard library."""

from __future__ import annotations

import contextlib
from importlib import metadata
import random
import sys
import time

import numpy as np

# The Data-OOB paper (Kwon & Zou, ICML 2023) values with a random forest of
# B=800 trees; that takes ~4 min of 2 cores at n=5000, d=1281, so the default
# caps it at 400 (the values are per-sample averages over ~B/e OOB trees each).
OOB_PAPER_ESTIMATORS = 800
OOB_DEFAULT_ESTIMATORS = 400


def _version(dist: str) -> str | None:
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


def valda_status() -> tuple[bool, str]:
  """(available, reason if not)."""
  # valda.valuation (DataValuation) imports torch for its influence-function
  # method, which valda does not declare; the TMC and Beta Shapley functions that
  # DataValuation.estimate() dispatches to are imported from their own modules.
  try:
    import valda.beta_shapley  # noqa: F401
    import valda.params  # noqa: F401
    import valda.tmc_shapley  # noqa: F401
  except Exception as exc:  # ImportError or anything raised at import
    return False, one_line(exc)
  return True, ""


def one_line(exc: BaseException) -> str:
  text = f"{type(exc).__name__}: {exc}"
  return " ".join(text.split())[:500]


def log(msg: str) -> None:
  print(f"[peers] {msg}", file=sys.stderr, flush=True)


def make_cheap_model(name: str, seed: int):
  """The model retrained on subsets by mc_shapley / valda_*."""
  if name == "centroid":
    from sklearn.neighbors import NearestCentroid

    return NearestCentroid()
  if name == "logreg":
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=20, random_state=seed)
  raise ValueError(f"unknown --mc_model {name!r}")


def model_settings(name: str) -> dict:
  return {
      "centroid": {
          "model": "sklearn.neighbors.NearestCentroid()"
      },
      "logreg": {
          "model": "sklearn.linear_model.LogisticRegression(max_iter=20, lbfgs)"
      },
  }[name]


def fit_cost(model, x, y, xv, yv, sizes, rng) -> float:
  """Seconds of one clone-fit-score on a random subset, averaged over `sizes`.

  Two untimed warm-up fits at the largest size, then each size is timed twice
  and the faster time kept (first calls pay page faults and cache misses).
  """
  from sklearn.base import clone

  def once(size) -> float:
    idx = rng.choice(len(y), size=min(len(y), max(2, int(size))), replace=False)
    t0 = time.perf_counter()
    with contextlib.suppress(ValueError):  # e.g. a single-class subset
      clone(model).fit(x[idx], y[idx]).score(xv, yv)
    return time.perf_counter() - t0

  for _ in range(2):
    once(max(sizes))
  return float(np.mean([min(once(s), once(s)) for s in sizes]))


class BudgetSkip(RuntimeError):
  pass


# -------------------------------------------------------------------------- methods


def run_knn_shapley(data, args, ctx):
  from joblib import parallel_config
  from pydvl.valuation import Dataset, KNNShapleyValuation
  from sklearn.neighbors import KNeighborsClassifier

  k = min(int(data["k"]), len(data["y_train"]))
  settings = {
      "model": f"KNeighborsClassifier(n_neighbors={k})",
      "k": k,
      "utility": "exact KNN-Shapley (Jia et al. 2019), averaged over the val set",
      "n_jobs": args.n_jobs,
  }
  ctx["settings"] = settings
  train = Dataset(data["x_train"], data["y_train"])
  val = Dataset(data["x_val"], data["y_val"])
  valuation = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), val, progress=False)
  with parallel_config(n_jobs=args.n_jobs):
    valuation.fit(train)
  return valuation.result


def run_data_oob(data, args, ctx):
  from pydvl.valuation import DataOOBValuation, Dataset
  from sklearn.ensemble import RandomForestClassifier

  settings = {
      "model": "RandomForestClassifier (bootstrap, fully grown trees, max_features='sqrt')",
      "n_estimators": args.oob_estimators,
      "paper_n_estimators": OOB_PAPER_ESTIMATORS,
      "score": "point-wise accuracy of each out-of-bag tree (pyDVL default)",
      "random_state": args.seed,
      "n_jobs": args.n_jobs,
  }
  ctx["settings"] = settings
  train = Dataset(data["x_train"], data["y_train"])
  model = RandomForestClassifier(n_estimators=args.oob_estimators,
                                 random_state=args.seed,
                                 n_jobs=args.n_jobs)
  t0 = time.perf_counter()
  model.fit(*train.data())
  settings["fit_seconds"] = round(time.perf_counter() - t0, 3)
  valuation = DataOOBValuation(model)
  valuation.fit(train)
  return valuation.result


def run_mc_shapley(data, args, ctx):
  from pydvl.valuation import (
      Dataset,
      HistoryDeviation,
      MaxTime,
      ModelUtility,
      RelativeTruncation,
      SupervisedScorer,
      TMCShapleyValuation,
  )

  x, y, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
  n = len(y)
  model = make_cheap_model(args.mc_model, args.seed)
  burn_in = 0.4
  settings = {
      **model_settings(args.mc_model),
      "valuation":
          "TMCShapleyValuation (permutation sampler, Ghorbani & Zou 2019)",
      "utility":
          "accuracy on the val set (default 0.0 when a fit fails)",
      "truncation":
          f"RelativeTruncation(rtol=0.01, burn_in_fraction={burn_in})",
      "stopping":
          f"MaxTime({args.time_budget_s}) | HistoryDeviation(n_steps=100, rtol=0.05)",
      "time_budget_s":
          args.time_budget_s,
      "seed":
          args.seed,
      "n_jobs":
          1,
      "note":
          "pyDVL checks the stopping criterion between permutations, so the "
          "last permutation may run past the budget",
  }
  ctx["settings"] = settings
  rng = np.random.default_rng(args.seed)
  # Lower bound on one permutation: the burn-in prefix (sizes 1..0.4n, mean
  # 0.2n) is never truncated.
  cost = fit_cost(model, x, y, xv, yv, [0.1 * n, 0.2 * n, 0.3 * n], rng)
  first_perm = (burn_in * n + 2) * cost
  settings["est_seconds_per_fit"] = round(cost, 4)
  settings["est_min_seconds_first_permutation"] = round(first_perm, 1)
  if first_perm > args.max_overrun * args.time_budget_s:
    raise BudgetSkip(f"skipped: one permutation needs >= {first_perm:.0f}s "
                     f"(> {args.max_overrun:g} x time budget {args.time_budget_s:g}s)")

  train = Dataset(x, y)
  val = Dataset(xv, yv)
  utility = ModelUtility(
      model,
      SupervisedScorer("accuracy", val, default=0.0, range=(0.0, 1.0)),
      catch_errors=True,
      show_warnings=False,
  )
  stopping = MaxTime(seconds=args.time_budget_s) | HistoryDeviation(n_steps=100, rtol=0.05)
  valuation = TMCShapleyValuation(
      utility,
      truncation=RelativeTruncation(rtol=0.01, burn_in_fraction=burn_in),
      is_done=stopping,
      seed=args.seed,
      show_warnings=False,
      progress=False,
  )
  valuation.fit(train)
  result = valuation.result
  counts = np.asarray(result.counts)
  settings["n_updates"] = int(counts.sum())
  settings["n_permutations"] = int(counts.min()) if counts.size else 0
  settings["status"] = str(result.status)
  return result


def _valda_params(**overrides) -> dict:
  from valda.params import Parameters

  params = Parameters()
  params.update(overrides)
  return dict(params.get_values())


def run_valda_tmc(data, args, ctx):
  x, y, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
  n = len(y)
  model = make_cheap_model(args.mc_model, args.seed)
  settings = {
      **model_settings(args.mc_model),
      "valuation": "valda.tmc_shapley.tmc_shapley (what DataValuation.estimate("
                   "method='tmc-shapley') calls)",
      "tmc_thresh": 0.001,
      "time_budget_s": args.time_budget_s,
      "seed": args.seed,
  }
  ctx["settings"] = settings
  ok, why = valda_status()
  if not ok:
    raise BudgetSkip(f"valda not installed: {why}")
  from valda.tmc_shapley import tmc_shapley

  rng = np.random.default_rng(args.seed)
  # valda refits on every prefix of each permutation (it truncates only when the
  # prefix score is within 1e-3 of the full-data score): ~n fits per iteration.
  cost = fit_cost(model, x, y, xv, yv, [0.25 * n, 0.5 * n, 0.75 * n], rng)
  per_iter = n * cost
  settings["est_seconds_per_fit"] = round(cost, 4)
  settings["est_seconds_per_iteration"] = round(per_iter, 1)
  if per_iter > args.max_overrun * args.time_budget_s:
    raise BudgetSkip(f"skipped: one valda TMC iteration needs ~{per_iter:.0f}s "
                     f"(> {args.max_overrun:g} x time budget {args.time_budget_s:g}s)")
  n_iter = max(1, int(args.time_budget_s // per_iter))
  settings["tmc_iter"] = n_iter
  random.seed(args.seed)
  np.random.seed(args.seed)
  p = _valda_params(tmc_iter=n_iter, tmc_thresh=0.001)
  with contextlib.redirect_stdout(sys.stderr):
    values = tmc_shapley(x, y, xv, yv, model, p["tmc_iter"], p["tmc_thresh"])
  return np.asarray(values, dtype=float)


def run_valda_beta(data, args, ctx):
  x, y, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
  n = len(y)
  model = make_cheap_model(args.mc_model, args.seed)
  settings = {
      **model_settings(args.mc_model),
      "valuation": "valda.beta_shapley.beta_shapley (what DataValuation.estimate("
                   "method='beta-shapley') calls)",
      "alpha": 1.0,
      "beta": 16.0,
      "rho": 1.0005,
      "time_budget_s": args.time_budget_s,
      "seed": args.seed,
      "note": "valda 0.1.10 weights each marginal by weight(j+1, n) with j the "
              "sample's index (not the subset size); run unmodified",
  }
  ctx["settings"] = settings
  ok, why = valda_status()
  if not ok:
    raise BudgetSkip(f"valda not installed: {why}")
  from valda.beta_shapley import beta_shapley

  rng = np.random.default_rng(args.seed)
  # Each iteration draws, for every sample and every chain, one random subset of
  # uniform size and fits it with and without the sample: 2*n*chains fits.
  cost = fit_cost(model, x, y, xv, yv, [0.25 * n, 0.5 * n, 0.75 * n], rng)
  per_chain_iter = 2 * n * cost
  settings["est_seconds_per_fit"] = round(cost, 4)
  settings["est_seconds_per_chain_iteration"] = round(per_chain_iter, 1)
  if per_chain_iter > args.max_overrun * args.time_budget_s:
    raise BudgetSkip(f"skipped: one valda Beta-Shapley iteration of one chain needs "
                     f"~{per_chain_iter:.0f}s (> {args.max_overrun:g} x time budget "
                     f"{args.time_budget_s:g}s)")
  chains = int(min(10, max(1, args.time_budget_s // per_chain_iter)))  # valda default 10
  n_iter = int(min(50, max(1, args.time_budget_s // (chains * per_chain_iter))))
  settings["beta_chain"] = chains
  settings["beta_iter"] = n_iter
  random.seed(args.seed)
  np.random.seed(args.seed)
  p = _valda_params(beta_iter=n_iter, beta_chain=chains, alpha=1.0, beta=16.0, rho=1.0005)
  with contextlib.redirect_stdout(sys.stderr), np.errstate(all="ignore"):
    values = beta_shapley(x, y, xv, yv, model, p["alpha"], p["beta"], p["rho"], p["beta_chain"],
                          p["beta_iter"])
  return np.asarray(values, dtype=float)


RUNNERS = {
    "knn_shapley": run_knn_shapley,
    "data_oob": run_data_oob,
    "mc_shapley": run_mc_shapley,
    "valda_tmc": run_valda_tmc,
    "valda_beta": run_valda_beta,
}
