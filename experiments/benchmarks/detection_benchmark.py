"""Mislabel detection across kinds of data: tables (binary and multi-class, d from 4 to 64)
and image embeddings, the default rule against its peers in the same run.

Every contender scores the same noisy training labels of a setting (a dataset, a noise model
and rate, a seed):

  diva_default          `find_label_issues` (the weighted outer mean: the derivative with each
                        sample's own term); F1 of its own flags
  diva_plain            the same rule with `outer="mean"` (the paper's derivative)
  loo_removal           `loo_removal_effect` at the same detection reg, flagged by the same count
  cleanlab_cv_logistic  cleanlab's `find_label_issues` on 5-fold CV logistic regression
  cleanlab_cv_hgb       the same on 5-fold HistGradientBoosting (cleanlab's tabular tutorial)
  cleanlab_knn_shapley  cleanlab's KNN-Shapley (k = 10), flagged by 2-means on the values

Metrics: AUROC of the ranking, F1 of the method's own flags, F1 of its top k (k = the number
of flipped labels) and wall time. Tables are standardised on the training split, divided by
sqrt(d), with a column of ones (the preprocessing `find_label_issues` documents for tabular
arrays); images are EfficientNet-Lite0 features (`common.prepare_features`).
"""

from __future__ import annotations

import os
import tempfile
import time

import ml_collections
import numpy as np

import diva_jax
from diva_jax import _optional
from diva_jax import data
from diva_jax.curation import valuation
from diva_jax.data import user_tables
from diva_jax.app import common
from diva_jax.app.common import ConfigError

SKLEARN_TABLES = ("breast_cancer", "wine", "iris", "digits_table", "digits_parity")
# Tables with named (and categorical) columns, read through `user_tables.load_table` like a
# user's CSV: palmerpenguins' species (rows with a missing cell dropped; island and sex
# one-hot), statsmodels' fair (binary: any affair) and anes96 (binary: the 1996 vote).
FRAME_TABLES = ("penguins", "fair", "anes96")
TABLES = SKLEARN_TABLES + FRAME_TABLES
IMAGES = ("mnist5k", "digits", "animal_mnist")
METHODS = ("diva_default", "diva_plain", "loo_removal", "cleanlab_cv_logistic",
           "cleanlab_cv_hgb", "cleanlab_knn_shapley")
NOISE = ("uniform", "pairwise")


# The preprocessing `curate` applies to a table source, and the one documented for
# `find_label_issues` on tabular arrays.
tabular_features = user_tables.standardize_table


def _frame(name: str):
  """(a pandas DataFrame, its label column) of a FRAME_TABLES set."""
  if name == "penguins":
    penguins = _optional.require("palmerpenguins", "the penguins table")
    return penguins.load_penguins().drop(columns=["year"]).dropna(), "species"
  datasets = _optional.require("statsmodels.datasets", f"the {name} table")
  df = getattr(datasets, name).load_pandas().data
  if name == "fair":
    return df.assign(affairs=(df["affairs"] > 0).astype(int)), "affairs"
  return df, "vote"


def load_table(name: str):
  """(features [n, d + 1] float32, labels, num_classes) of the 60% training split."""
  if name in FRAME_TABLES:
    df, label = _frame(name)
    perm = np.random.default_rng(0).permutation(len(df))
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, f"{name}.csv")
      df.iloc[perm[:int(round(0.6 * len(df)))]].to_csv(path, index=False)
      table = user_tables.load_table(path, label_column=label)
    return table.features, table.labels, len(table.class_names)
  from sklearn import datasets as skd
  loaders = {"breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine,
             "iris": skd.load_iris, "digits_table": skd.load_digits,
             "digits_parity": skd.load_digits}
  x, y = loaders[name](return_X_y=True)
  if name == "digits_parity":
    y = y % 2
  perm = np.random.default_rng(0).permutation(len(y))
  n_train = int(round(0.6 * len(y)))
  x, y = x[perm[:n_train]].astype(np.float64), y[perm[:n_train]].astype(np.int64)
  return tabular_features(x), y, int(y.max()) + 1


def _check_dataset(name):
  if name not in TABLES + IMAGES:
    raise ConfigError(f"datasets: unknown dataset {name!r}; expected one of "
                      f"{TABLES + IMAGES}.")


def check_config(config) -> None:
  if not config.datasets:
    raise ConfigError("datasets must list at least one dataset.")
  for name in config.datasets:
    _check_dataset(name)
  for spec in config.noise:
    kind, _, rate = spec.partition(":")
    try:
      ok = kind in NOISE and 0.0 < float(rate) < 1.0
    except ValueError:
      ok = False
    if not ok:
      raise ConfigError(f"noise entries must be 'uniform:R' or 'pairwise:R' with R in (0, 1), "
                        f"got {spec!r}.")
  common.check_int(config, "seeds", 1)
  common.check_int(config, "seed", 0)
  common.check_subset(config, "methods", METHODS)
  common.check_int(config, "max_train", 0)
  common.check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  common.check_int(config, "image_size", 32)
  common.check_int(config, "batch_size", 1)


def _noisy(labels, c, kind, rate, seed):
  if kind == "uniform":
    res = data.uniform_label_noise(labels, c, rate, seed)
  else:
    res = data.class_conditional_label_noise(labels, data.pairwise_transition(c, rate), seed)
  return res.labels, res.flipped


def _f1(flags, truth):
  tp = int(np.sum(flags & truth))
  return 2.0 * tp / max(int(flags.sum()) + int(truth.sum()), 1)


def _cleanlab(probs, labels):
  from cleanlab.filter import find_label_issues
  flags = find_label_issues(labels, probs, n_jobs=1)  # no fork beside JAX threads
  return 1.0 - probs[np.arange(len(labels)), labels], flags


def score(method, x, y, c):
  """(score [n] (high: suspicious), own flags [n] bool)."""
  if method in ("diva_default", "diva_plain"):
    r = diva_jax.find_label_issues(y, features=x, num_classes=c,
                                   outer="weighted" if method == "diva_default" else "mean")
    return r.derivative, r.flagged
  if method == "loo_removal":
    r = diva_jax.find_label_issues(y, features=x, num_classes=c)
    values = valuation.loo_removal_effect(np.eye(c, dtype=x.dtype)[y], features=x,
                                          reg=r.detection_reg, loss="ce", temperature=0.3)
    flags = np.zeros(len(y), bool)
    flags[np.argsort(values, kind="stable")[:r.num_issues]] = True
    return -np.asarray(values), flags
  if method == "cleanlab_cv_logistic":
    cfg = ml_collections.ConfigDict({"logistic_max_iter": 1000, "logistic_c": 1.0})
    return _cleanlab(common.cv_logistic_probs(x, y, cfg), y)
  if method == "cleanlab_cv_hgb":
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict
    with common.single_blas_thread():
      probs = cross_val_predict(HistGradientBoostingClassifier(max_iter=100, random_state=0),
                                x, y, cv=5, method="predict_proba")
    return _cleanlab(probs, y)
  from cleanlab.data_valuation import data_shapley_knn
  values = np.asarray(data_shapley_knn(y, features=x, k=10))
  return -values, valuation.two_means_split(values)


def _load(config, name, wd):
  if name in TABLES:
    x, y, c = load_table(name)
  else:
    cfg = ml_collections.ConfigDict({
        "dataset": name, "max_train": int(config.max_train), "max_test": 0,
        "linearize": "last_layer", "backbone": config.backbone,
        "image_size": int(config.image_size), "batch_size": int(config.batch_size),
        "data_dir": config.data_dir, "cache_dir": config.cache_dir or wd.file("cache")})
    train, _ = common.prepare_features(cfg, wd)
    x, y, c = train.features, train.labels, len(train.class_names)
  if config.max_train and len(y) > config.max_train:
    x, y = x[:config.max_train], y[:config.max_train]
  return np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64), c


def run(config, workdir: str, *, overwrite: bool = False) -> list:
  """Runs every (dataset, noise, seed, method) cell; writes results.json, summary.csv and
  metrics.json; prints the summary table. Cells are stages: an interrupted run resumes."""
  check_config(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  rows = []
  for name in config.datasets:
    x, clean, c = _load(config, name, wd)
    for spec in config.noise:
      kind, _, rate = spec.partition(":")
      for seed in range(config.seed, config.seed + config.seeds):
        noisy, truth = _noisy(clean, c, kind, float(rate), seed)
        if not truth.any():
          continue
        for method in config.methods:
          def compute(method=method):
            start = time.perf_counter()
            s, flags = score(method, x, noisy, c)
            seconds = time.perf_counter() - start
            top = np.zeros(len(s), bool)
            top[np.argsort(-np.asarray(s, np.float64), kind="stable")[:int(truth.sum())]] = True
            return {"auroc": diva_jax.auroc(s, truth), "f1": _f1(np.asarray(flags, bool), truth),
                    "topk_f1": _f1(top, truth), "flagged": int(np.sum(flags)),
                    "seconds": seconds}
          r = wd.stage_json(f"{name}_{kind}{rate}_s{seed}_{method}", compute)
          rows.append({"dataset": name, "n": len(clean), "d": x.shape[1], "classes": c,
                       "noise": spec, "seed": seed, "method": method, **r})
  summary = summarize(rows)
  wd.write_json("results.json", rows)
  keys = list(summary[0].keys())
  wd.write_csv("summary.csv", {k: [s[k] for s in summary] for k in keys})
  wd.write_json("metrics.json", {"summary": summary, "targets": targets(summary)})
  print_summary(summary)
  print(f"outputs: {wd.file('summary.csv')}, results.json, metrics.json")
  return rows


def summarize(rows):
  """Mean (and std over seeds) of each metric per (dataset, noise, method)."""
  out = []
  cells = {}
  for r in rows:
    cells.setdefault((r["dataset"], r["noise"], r["method"]), []).append(r)
  for (name, noise, method), rs in cells.items():
    entry = {"dataset": name, "n": rs[0]["n"], "d": rs[0]["d"], "classes": rs[0]["classes"],
             "noise": noise, "method": method, "seeds": len(rs)}
    for k in ("auroc", "f1", "topk_f1", "seconds"):
      v = np.array([r[k] for r in rs])
      entry[k], entry[k + "_std"] = float(v.mean()), float(v.std())
    out.append(entry)
  return out


def targets(summary):
  """The issue's targets per cell: the default's AUROC against cleanlab-CV logistic, and its
  F1 against the best contender."""
  cells = {}
  for s in summary:
    cells.setdefault((s["dataset"], s["noise"]), {})[s["method"]] = s
  out = []
  for (name, noise), ms in cells.items():
    if "diva_default" not in ms:
      continue
    mine = ms["diva_default"]
    others = {m: v for m, v in ms.items() if m != "diva_default"}
    best = max(others.values(), key=lambda v: v["f1"]) if others else None
    cl = ms.get("cleanlab_cv_logistic")
    out.append({"dataset": name, "noise": noise,
                "auroc_minus_cleanlab_cv": None if cl is None else mine["auroc"] - cl["auroc"],
                "f1_minus_best_other": None if best is None else mine["f1"] - best["f1"],
                "best_other": None if best is None else best["method"]})
  return out


def print_summary(summary):
  print(f"{'dataset':15s} {'noise':13s} {'method':21s} {'AUROC':>6s} {'F1':>6s} "
        f"{'top-k F1':>8s} {'s':>6s}")
  for s in summary:
    print(f"{s['dataset']:15s} {s['noise']:13s} {s['method']:21s} {s['auroc']:6.3f} "
          f"{s['f1']:6.3f} {s['topk_f1']:8.3f} {s['seconds']:6.2f}")
