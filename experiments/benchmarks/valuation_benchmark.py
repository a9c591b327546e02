"""The dataset derivative among the data-valuation methods, on one protocol.

Every method values the same training samples (features, noisy labels) and is scored by the
same code (`diva_jax.curation.valuation`, OpenDataVal's protocol):

- noisy-sample detection: the F1 of the low cluster of the exact 2-means split of the values
  against the noise mask (and the AUROC of minus the values, for the ranking alone);
- point removal / addition: the test accuracy of one downstream model (a ridge head, reg the
  exact-LOO optimum of the full noisy training set, fixed along the curve) trained on all but
  the lowest- ("remove_low") or highest-valued ("remove_high") x% of the samples, or on only
  the highest- ("add_high") or lowest-valued ("add_low") x%; the area under each curve.

Methods (values: higher = more valuable):

  diva_default          minus the dataset derivative of the library's default rule
                        (`diva_jax.find_label_issues`: LOO cross-entropy at T = 0.3, at 10 x
                        the exact-LOO reg); its own automatic threshold is scored too
                        ("own-rule F1");
  diva_plain            minus the derivative at the exact-LOO reg itself;
  loo_removal           the exact change of the LOO loss when the sample is removed
                        (`diva_jax.loo_removal_effect`: all n from the closed form, no refit);
  cleanlab_knn_shapley  cleanlab's KNN-Shapley (`cleanlab.data_valuation.data_shapley_knn`,
                        what Datalab's `data_valuation` issue type runs), k = `knn`;
  pydvl_knn_shapley, pydvl_data_oob, pydvl_mc_shapley, valda_tmc, valda_beta
                        pyDVL's and valda's, unmodified, in a virtual env of their own
                        (`experiments/peers/`: pyDVL pins numpy < 2), given the features and
                        labels through files. Those that need a utility set get `val`: half of
                        the dataset's test split with labels noised at the same rate (the user
                        has no clean set); the other half, with its true labels, scores the
                        curves. `slow_peer_max_n` caps the n of the Monte-Carlo ones;
  random                seeded random values (the floor).

Wall time: each method's own, on the same machine, one at a time (peers in their venv, their
process start excluded). Outputs: results.json (every run), summary.csv (mean and std per
dataset, noise rate and method), versions.json, curves_<dataset>.png; stages per (dataset,
noise rate, seed, method group), so a killed run resumes.
"""

from __future__ import annotations

import sys
import time

import ml_collections
import numpy as np

from diva_jax.curation import valuation
from diva_jax.data import noise as label_noise
from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from experiments.benchmarks.valuation_peers import PEERS
from experiments.benchmarks.valuation_peers import SLOW_PEERS
from experiments.benchmarks.valuation_peers import run_peers as _peers
from experiments.benchmarks.valuation_scoring import LogisticDownstream
from experiments.benchmarks.valuation_scoring import RidgeDownstream
from experiments.benchmarks.valuation_scoring import score
import diva_jax

OWN = ("diva_default", "diva_plain", "loo_removal", "cleanlab_knn_shapley", "random")
METHODS = OWN + tuple(PEERS)
TABULAR = ("breast_cancer", "wine")   # scikit-learn's bundled tables
DOWNSTREAMS = ("ridge", "logistic")


def _settings(config):
  entries = tuple(config.settings)
  if not entries:
    raise ConfigError("settings must list at least one 'dataset:max_train' entry.")
  out = []
  for s in entries:
    dataset, _, max_train = str(s).partition(":")
    if not max_train.isdigit():
      raise ConfigError(f"settings entries are 'dataset:max_train' (0 = all), got {s!r}.")
    if dataset not in TABULAR:
      common.check_dataset(dataset)
    out.append((dataset, int(max_train)))
  return out


def _fractions(config, name, allow_zero):
  fr = tuple(config[name])
  ok = (len(fr) >= 2 and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                             for f in fr) and all(0 <= f <= 1 for f in fr)
        and all(b > a for a, b in zip(fr, fr[1:])) and (allow_zero or fr[0] > 0))
  if not ok:
    raise ConfigError(f"{name} must list at least 2 increasing fractions in "
                      f"{'[0' if allow_zero else '(0'}, 1], got {fr}.")
  return fr


def validate(config) -> None:
  common.check_common(config)
  _settings(config)
  rates = tuple(config.noise_rates)
  if not rates or not all(isinstance(r, (int, float)) and 0 < r < 1 for r in rates):
    raise ConfigError(f"noise_rates must list numbers in (0, 1), got {rates}.")
  common.check_int(config, "seeds", 1)
  common.check_int(config, "seed", 0)
  common.check_subset(config, "methods", METHODS)
  common.check_subset(config, "downstreams", DOWNSTREAMS)
  _fractions(config, "removal_fractions", True)
  _fractions(config, "addition_fractions", False)
  common.check_int(config, "knn", 1)
  common.check_int(config, "slow_peer_max_n", 0)
  common.check_int(config, "logistic_max_n", 0)
  common.check_float(config, "peer_time_budget_s", low=0.0, low_open=True)
  if not isinstance(config.peer_venv, str):
    raise ConfigError(f"peer_venv must be a path string ('' = default), got "
                      f"{config.peer_venv!r}.")
  common.check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  sizes = tuple(config.scaling_sizes)
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 10 for v in sizes) or (
      list(sizes) != sorted(set(sizes))):
    raise ConfigError(f"scaling_sizes must be increasing integers >= 10 (or empty), got "
                      f"{sizes}.")
  common.check_float(config, "scaling_budget_s", low=0.0, low_open=True)


# ----------------------------------------------------------------------------- data


def _tabular(name):
  from sklearn import datasets
  load = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]
  x, y = load(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = x[perm].astype(np.float64), y[perm].astype(np.int64)
  n_train = int(round(0.6 * len(y)))
  mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-12
  z = (x - mean) / std / np.sqrt(x.shape[1])
  z = np.concatenate([z, np.ones((len(z), 1))], 1).astype(np.float32)
  return z[:n_train], y[:n_train], z[n_train:], y[n_train:], int(y.max()) + 1


def _load(config, dataset, max_train, wd):
  """(x, labels, x_test, test_labels, num_classes) of a setting."""
  if dataset in TABULAR:
    x, y, xt, yt, c = _tabular(dataset)
    if max_train:
      x, y = x[:max_train], y[:max_train]
    wd.commit()
    return x, y, xt, yt, c
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset, c.max_train, c.max_test = dataset, max_train, 0
  c.linearize, c.noise_type = "last_layer", "uniform"
  c.cache_dir = config.cache_dir or wd.file("cache")
  train, test = common.prepare_features(c, wd)
  return (train.features, train.labels, test.features, test.labels, len(train.class_names))


def _split_test(xt, yt):
  """Half of the test split is the peers' utility set, the other half scores the curves."""
  perm = np.random.default_rng(1).permutation(len(yt))
  half = len(yt) // 2
  return (xt[perm[:half]], yt[perm[:half]]), (xt[perm[half:]], yt[perm[half:]])


# ----------------------------------------------------------------------------- methods


_WARM = set()


def _own(method, x, noisy, num_classes, config, seed):
  """(values, seconds, extra) of one of our own methods. The first call of a method for a
  data shape runs it twice and times the second run: imports and JIT compilation excluded."""
  if (method, x.shape, num_classes) not in _WARM:
    _WARM.add((method, x.shape, num_classes))
    _own(method, x, noisy, num_classes, config, seed)
  t = common.one_hot(noisy, num_classes)
  start = time.perf_counter()
  extra = {}
  if method == "diva_default":
    res = diva_jax.find_label_issues(noisy, features=x, num_classes=num_classes)
    values = -res.derivative
    extra = {"flagged": np.flatnonzero(res.flagged).tolist(), "reg": res.reg}
  elif method in ("diva_plain", "loo_removal"):
    reg = float(diva_jax.select_reg(t, features=x, loss="ce", temperature=0.3).reg)
    if method == "diva_plain":
      values = -np.asarray(diva_jax.dataset_derivative(
          np.ones(len(noisy), np.float32), t, features=x, reg=reg, loss="ce",
          temperature=0.3), np.float64)
    else:
      values = valuation.loo_removal_effect(t, features=x, reg=reg, loss="ce",
                                            temperature=0.3)
    extra = {"reg": reg}
  elif method == "cleanlab_knn_shapley":
    from cleanlab.data_valuation import data_shapley_knn
    values = data_shapley_knn(noisy, features=x, k=int(config.knn))
  elif method == "random":
    values = np.random.default_rng([seed, 99]).random(len(noisy))
  else:
    raise AssertionError(method)
  return np.asarray(values, np.float64), time.perf_counter() - start, extra


# ----------------------------------------------------------------------------- run


def _one(config, wd, tag, x, labels, xv, yv_clean, xe, ye, num_classes, rate, seed):
  noisy, flipped = label_noise.uniform_label_noise(labels, num_classes, rate, seed)
  yv = label_noise.uniform_label_noise(yv_clean, num_classes, rate, seed + 1000).labels
  n = len(labels)
  values, times, errors, extras = {}, {}, {}, {}
  for m in (m for m in config.methods if m in OWN):
    r = wd.stage_json(f"{tag}_{m}", lambda m=m: dict(zip(
        ("values", "seconds", "extra"), _own(m, x, noisy, num_classes, config, seed))),
        collective=False)
    values[m], times[m], extras[m] = np.asarray(r["values"]), r["seconds"], r["extra"]
  peers = [m for m in config.methods if m in PEERS]
  skipped = [m for m in peers if m in SLOW_PEERS and config.slow_peer_max_n
             and n > config.slow_peer_max_n]
  for m in skipped:
    errors[m] = f"skipped: n = {n} > slow_peer_max_n = {config.slow_peer_max_n}"
  run_peers = [m for m in peers if m not in skipped]
  versions = {}
  if run_peers:
    r = wd.stage_json(f"{tag}_peers", lambda: dict(zip(("methods", "versions"), _peers(
        run_peers, x, noisy, xv, yv, config, seed))), collective=False)
    versions = r["versions"]
    for m, v in r["methods"].items():
      if v.get("values") is None:
        errors[m] = v.get("error") or "no values"
      else:
        values[m], times[m] = np.asarray(v["values"], np.float64), v["seconds"]
        extras[m] = v.get("settings", {})
  reg = extras.get("diva_plain", {}).get("reg")  # the same exact-LOO optimum, if chosen
  if reg is None:
    reg = float(diva_jax.select_reg(common.one_hot(noisy, num_classes), features=x,
                                    loss="ce", temperature=0.3).reg)
  downstreams = {}
  if "ridge" in config.downstreams:
    downstreams["ridge"] = RidgeDownstream(x, noisy, num_classes, reg, xe, ye)
  if "logistic" in config.downstreams and (not config.logistic_max_n
                                           or n <= config.logistic_max_n):
    downstreams["logistic"] = LogisticDownstream(x, noisy, xe, ye)
  scores = wd.stage_json(f"{tag}_scores", lambda: {
      m: score(v, flipped, downstreams, config, seed) for m, v in values.items()},
      collective=False)
  if "diva_default" in extras:
    own = np.zeros(n, bool)
    own[extras["diva_default"]["flagged"]] = True
    scores["diva_default"]["own_rule_f1"] = float(diva_jax.detection_metrics(
        own - 0.5, flipped).f1)
  return {"n": n, "noisy": int(flipped.sum()), "num_val": len(yv), "num_eval": len(ye),
          "downstream_reg": reg, "seconds": times, "errors": errors, "scores": scores,
          "settings": {m: e for m, e in extras.items() if m != "diva_default"}}, versions


def _nanstat(vals):
  vals = np.asarray(vals, np.float64)
  ok = vals[np.isfinite(vals)]
  return (float(ok.mean()), float(ok.std())) if ok.size else (float("nan"), float("nan"))


def summarize(rows, config) -> list:
  cells = {}
  for r in rows:
    for m, s in r["scores"].items():
      cells.setdefault((r["dataset"], r["noise_rate"], m), []).append((s, r["seconds"][m]))
  out = []
  for (dataset, rate, m), vs in cells.items():
    cell = {"dataset": dataset, "noise_rate": rate, "method": m, "seeds": len(vs)}
    keys = ["f1", "auroc"] + [k for k in vs[0][0] if k.endswith("_auc")]
    if "own_rule_f1" in vs[0][0]:
      keys.append("own_rule_f1")
    for k in keys:
      vals = np.asarray([np.nan if s.get(k) is None else s[k] for s, _ in vs], np.float64)
      cell[f"{k}_mean"], cell[f"{k}_std"] = _nanstat(vals)
    for fraction in (0.1, 0.2):
      for d in config.downstreams:
        vals = [s[f"{d}_remove_low"][list(config.removal_fractions).index(fraction)]
                for s, _ in vs if f"{d}_remove_low" in s
                and fraction in list(config.removal_fractions)]
        if vals:
          cell[f"{d}_acc_remove_low_{int(fraction * 100)}_mean"] = _nanstat(
              [np.nan if v is None else v for v in vals])[0]
    cell["seconds_mean"] = float(np.mean([t for _, t in vs]))
    out.append(cell)
  return out


def _plot(rows, dataset, config):
  from diva_jax.app import plots
  plt = plots._plt()
  rates = sorted({r["noise_rate"] for r in rows if r["dataset"] == dataset})
  fig, axes = plt.subplots(len(rates), 4, figsize=(16, 3.4 * len(rates)), squeeze=False)
  for i, rate in enumerate(rates):
    rs = [r for r in rows if r["dataset"] == dataset and r["noise_rate"] == rate]
    methods = list(rs[0]["scores"])
    for j, curve in enumerate(valuation.CURVES):
      ax = axes[i][j]
      fr = np.asarray(config.removal_fractions if curve.startswith("remove")
                      else config.addition_fractions)
      for m in methods:
        key = f"ridge_{curve}"
        curves = [r["scores"][m][key] for r in rs if m in r["scores"] and key in r["scores"][m]]
        if curves:
          ax.plot(100 * fr, 100 * np.mean(curves, 0), marker=".", label=m,
                  lw=2.2 if m.startswith("diva") else 1.2)
      ax.set_title(f"{dataset}, {int(rate * 100)}% noise: {curve.replace('_', ' ')}",
                   fontsize=9)
      ax.set_xlabel("% of the training samples " + ("removed" if curve.startswith("remove")
                                                     else "kept"))
      ax.set_ylabel("test accuracy %")
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def scaling(config, wd, x, labels, xv, yv_clean, num_classes) -> list:
  """Per method and n in config.scaling_sizes (the first n samples, 20% noise, seed
  config.seed): its
  wall time, until one exceeds scaling_budget_s; then the largest n it values within the
  budget, by a power law through its last two times (or the largest n timed, if that is
  still within budget: a lower bound)."""
  budget = float(config.scaling_budget_s)
  sizes = [int(s) for s in config.scaling_sizes if int(s) <= len(labels)]
  rate = float(config.noise_rates[0])
  rows = []
  for m in config.methods:
    times = []
    for n in sizes:
      noisy = label_noise.uniform_label_noise(labels[:n], num_classes, rate,
                                             int(config.seed)).labels
      yv = label_noise.uniform_label_noise(yv_clean, num_classes, rate, 1000).labels

      def compute(m=m, n=n, noisy=noisy, yv=yv):
        if m in OWN:
          seconds = _own(m, x[:n], noisy, num_classes, config, int(config.seed))[1]
          return {"seconds": seconds, "error": None, "settings": {}}
        res, _ = _peers([m], x[:n], noisy, xv, yv, config, int(config.seed))
        return {"seconds": res[m].get("seconds"), "error": res[m].get("error"),
                "settings": res[m].get("settings", {})}

      r = wd.stage_json(f"scaling_{m}_n{n}", compute, collective=False)
      if r["error"] or r["seconds"] is None:
        rows.append({"method": m, "n": n, "seconds": None, "error": r["error"]})
        break
      times.append((n, float(r["seconds"])))
      rows.append({"method": m, "n": n, "seconds": float(r["seconds"]), "error": None,
                   "settings": r["settings"]})
      if r["seconds"] > budget:
        break
    if times:
      ok = [(n, t) for n, t in times if t <= budget]
      if len(times) >= 2 and times[-1][1] > times[-2][1] > 0:
        (n1, t1), (n2, t2) = times[-2:]
        power = np.log(t2 / t1) / np.log(n2 / n1)
        n_max = n2 * (budget / t2) ** (1 / power) if power > 0.05 else float("inf")
      else:
        power, n_max = float("nan"), float("nan")
      rows.append({"method": m, "n": "max_in_budget", "power": float(power),
                   "largest_timed_within_budget": ok[-1][0] if ok else 0,
                   "extrapolated_n": n_max, "extrapolated": bool(ok and n_max > ok[-1][0])})
  return rows


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  if config.scaling_sizes:
    dataset, max_train = _settings(config)[0]
    x, labels, xt, yt, num_classes = _load(config, dataset, max_train, wd)
    (xv, yv), _ = _split_test(xt, yt)
    rows = scaling(config, wd, x, labels, xv, yv, num_classes)
    wd.write_json("scaling.json", rows)
    if common.is_main_process():
      print(f"method | n | seconds ({dataset}, budget {config.scaling_budget_s:.0f} s)")
      for r in rows:
        if r["n"] == "max_in_budget":
          print(f"{r['method']} | largest n in budget: timed {r['largest_timed_within_budget']}"
                f", power law t ~ n^{r['power']:.2f} gives {r['extrapolated_n']:.3g}")
        else:
          print(f"{r['method']} | {r['n']} | "
                + (f"{r['seconds']:.2f}" if r["seconds"] is not None else r["error"]))
      print(f"outputs: {wd.file('scaling.json')}")
    metrics = {"scaling": rows}
    wd.write_json("metrics.json", metrics)
    return metrics
  rows, versions = [], {}
  for dataset, max_train in _settings(config):
    x, labels, xt, yt, num_classes = _load(config, dataset, max_train, wd)
    (xv, yv), (xe, ye) = _split_test(xt, yt)
    for rate in config.noise_rates:
      for seed in range(int(config.seed), int(config.seed) + int(config.seeds)):
        tag = f"{dataset}_{max_train}_r{int(round(rate * 100))}_s{seed}"
        row, v = _one(config, wd, tag, x, labels, xv, yv, xe, ye, num_classes, float(rate),
                      seed)
        versions.update(v)
        rows.append({"dataset": dataset, "max_train": max_train, "noise_rate": float(rate),
                     "seed": seed, **row})
  import cleanlab
  import jax
  versions.update({"diva_jax": diva_jax.__version__, "jax": jax.__version__,
                   "cleanlab": cleanlab.__version__, "numpy": np.__version__,
                   "python": sys.version.split()[0]})
  wd.write_json("results.json", rows)
  wd.write_json("versions.json", versions)
  summary = summarize(rows, config)
  keys = list(dict.fromkeys(k for s in summary for k in s))
  wd.write_csv("summary.csv", {k: [s.get(k, float("nan")) for s in summary] for k in keys})
  for dataset, _ in _settings(config):
    wd.savefig(f"curves_{dataset}.png", _plot(rows, dataset, config))
  if common.is_main_process():
    d0 = config.downstreams[0]
    print(f"dataset | noise | method | 2-means F1 | AUROC | {d0} acc. removing the lowest "
          f"10% / 20% | remove-low AUC | add-high AUC | seconds (mean +- std over seeds)")
    for s in summary:
      acc = [s.get(f"{d0}_acc_remove_low_{p}_mean") for p in (10, 20)]
      acc = " / ".join("-" if a is None else f"{100 * a:.2f}" for a in acc)
      print(f"{s['dataset']} | {s['noise_rate']:.2f} | {s['method']} | "
            f"{s['f1_mean']:.3f} +- {s['f1_std']:.3f} | {s['auroc_mean']:.3f} | {acc} | "
            f"{100 * s.get(f'{d0}_remove_low_auc_mean', float('nan')):.2f} | "
            f"{100 * s.get(f'{d0}_add_high_auc_mean', float('nan')):.2f} | "
            f"{s['seconds_mean']:.2f}")
    errs = {(r["dataset"], m): e for r in rows for m, e in r["errors"].items()}
    for (dataset, m), e in errs.items():
      print(f"{dataset} | {m}: {e}")
    print(f"outputs: {wd.file('summary.csv')}, results.json, versions.json, metrics.json, "
          "curves_*.png")
  metrics = {"rows": rows, "summary": summary, "versions": versions}
  wd.write_json("metrics.json", metrics)
  return metrics
