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
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402

ALL_METHODS = ("knn_shapley", "data_oob", "mc_shapley", "valda_tmc", "valda_beta")
# The Data-OOB paper (Kwon & Zou, ICML 2023) values with a random forest of
# B=800 trees; that takes ~4 min of 2 cores at n=5000, d=1281, so the default
# caps it at 400 (the values are per-sample averages over ~B/e OOB trees each).
OOB_PAPER_ESTIMATORS = 800
OOB_DEFAULT_ESTIMATORS = 400


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


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
        "centroid": {"model": "sklearn.neighbors.NearestCentroid()"},
        "logreg": {"model": "sklearn.linear_model.LogisticRegression(max_iter=20, lbfgs)"},
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
    model = RandomForestClassifier(
        n_estimators=args.oob_estimators, random_state=args.seed, n_jobs=args.n_jobs
    )
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
        "valuation": "TMCShapleyValuation (permutation sampler, Ghorbani & Zou 2019)",
        "utility": "accuracy on the val set (default 0.0 when a fit fails)",
        "truncation": f"RelativeTruncation(rtol=0.01, burn_in_fraction={burn_in})",
        "stopping": f"MaxTime({args.time_budget_s}) | HistoryDeviation(n_steps=100, rtol=0.05)",
        "time_budget_s": args.time_budget_s,
        "seed": args.seed,
        "n_jobs": 1,
        "note": "pyDVL checks the stopping criterion between permutations, so the "
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
        raise BudgetSkip(
            f"skipped: one permutation needs >= {first_perm:.0f}s "
            f"(> {args.max_overrun:g} x time budget {args.time_budget_s:g}s)"
        )

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
        raise BudgetSkip(
            f"skipped: one valda TMC iteration needs ~{per_iter:.0f}s "
            f"(> {args.max_overrun:g} x time budget {args.time_budget_s:g}s)"
        )
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
        raise BudgetSkip(
            f"skipped: one valda Beta-Shapley iteration of one chain needs "
            f"~{per_chain_iter:.0f}s (> {args.max_overrun:g} x time budget "
            f"{args.time_budget_s:g}s)"
        )
    chains = int(min(10, max(1, args.time_budget_s // per_chain_iter)))  # valda default 10
    n_iter = int(min(50, max(1, args.time_budget_s // (chains * per_chain_iter))))
    settings["beta_chain"] = chains
    settings["beta_iter"] = n_iter
    random.seed(args.seed)
    np.random.seed(args.seed)
    p = _valda_params(beta_iter=n_iter, beta_chain=chains, alpha=1.0, beta=16.0,
                      rho=1.0005)
    with contextlib.redirect_stdout(sys.stderr), np.errstate(all="ignore"):
        values = beta_shapley(x, y, xv, yv, model, p["alpha"], p["beta"], p["rho"],
                              p["beta_chain"], p["beta_iter"])
    return np.asarray(values, dtype=float)


RUNNERS = {
    "knn_shapley": run_knn_shapley,
    "data_oob": run_data_oob,
    "mc_shapley": run_mc_shapley,
    "valda_tmc": run_valda_tmc,
    "valda_beta": run_valda_beta,
}


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
    return {"values": values, "seconds": round(seconds, 3), "error": error,
            "settings": ctx["settings"]}


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
    return ({"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
             "k": 5}, flipped)


# ---------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="IN.npz (ignored with --smoke)")
    p.add_argument("--output", help="OUT.json (optional with --smoke)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    p.add_argument("--time_budget_s", type=float, default=60.0,
                   help="wall-time budget of each Monte-Carlo method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--n_jobs", type=int, default=2, choices=(1, 2),
                   help="joblib workers for knn_shapley and data_oob")
    p.add_argument("--oob_estimators", type=int, default=OOB_DEFAULT_ESTIMATORS,
                   help=f"trees in the Data-OOB forest (paper: {OOB_PAPER_ESTIMATORS})")
    p.add_argument("--mc_model", default="centroid", choices=("centroid", "logreg"),
                   help="model retrained by mc_shapley / valda_* (centroid: "
                   "NearestCentroid; logreg: LogisticRegression(max_iter=20))")
    p.add_argument("--max_overrun", type=float, default=3.0,
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
        "input": {"path": source, "n": int(n), "m": int(len(data["y_val"])), "d": int(d),
                  "k": int(data["k"]),
                  "n_classes": int(len(np.unique(data["y_train"])))},
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
              f"mean(flipped)={low:.4g} mean(clean)={high:.4g}"
              + ("" if must_rank else " (ranking not checked)"))
    print(f"SMOKE {'PASSED' if failures == 0 else f'FAILED ({failures})'}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
