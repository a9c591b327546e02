"""DIVA in the training loop against plain training, one-shot curation, a robust loss and
the oracles, on the same data, architecture and budget.

The network: EfficientNet-Lite0 frozen through its pooled features (cached, so this runs on
CPU), then a trained MLP head (`hidden` ReLU units, then the classes): its hidden layer is the
penultimate representation that moves during training. Every method trains the same head
with Adam for `epochs` epochs of `batch_size`, from the same initialisation:

  plain        the noisy labels, every sample weight 1;
  one_shot     the library's default rule on the frozen features (`find_label_issues`) once,
               then training on the kept samples;
  diva         per-sample weights next to the parameters (`diva_jax.curation.training`):
               every `diva_interval` epochs from `diva_start` on, one projected weight step
               on the dataset derivative of the exact LOO cross-entropy of a ridge head on
               the *current* hidden features (reg: 10x its exact-LOO optimum there), then the
               parameter steps on the weighted loss;
  gce          generalized cross-entropy (Zhang & Sabuncu 2018) with q = `gce_q`, needs no
               clean set;
  oracle       training on exactly the clean samples;
  true_labels  the true labels (the ceiling).

Per (setting, noise, seed, method) one resumable stage: the per-epoch test error and the mean
weight of noisy and clean samples, the detection F1 of the final weights (weight < 1/2 read as
flagged), the wall time. Outputs: results.json, curves.csv, summary.csv, curves.png.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diva_jax.curation import detect
from diva_jax.curation import label_issues
from diva_jax.curation import training
from diva_jax.runs.lib import common
from diva_jax.runs.lib import plots
from diva_jax.runs.lib.errors import ConfigError

METHODS = ("plain", "one_shot", "diva", "gce", "oracle", "true_labels")
NOISE_TYPES = ("uniform", "pairwise")


def parse_noise(entries) -> list[tuple[str, float]]:
  """('uniform:0.2', 'pairwise:0.2') -> [('uniform', 0.2), ...]."""
  out = []
  for e in tuple(entries):
    kind, _, rate = str(e).partition(":")
    try:
      r = float(rate)
    except ValueError:
      r = -1.0
    if kind not in NOISE_TYPES or not 0.0 < r < 1.0:
      raise ConfigError(f"noise entries are 'uniform:RATE' or 'pairwise:RATE' with RATE in "
                        f"(0, 1), got {e!r}.")
    out.append((kind, r))
  if not out:
    raise ConfigError("noise must list at least one 'uniform:RATE' or 'pairwise:RATE' entry.")
  return out


def validate(config) -> None:
  """Every config value, before anything is read or written (ConfigError)."""
  common.check_common(config)
  common.check_settings(config)
  parse_noise(config.noise)
  methods = tuple(config.methods)
  bad = [m for m in methods if m not in METHODS]
  if not methods or bad:
    raise ConfigError(f"methods must be a non-empty subset of {METHODS}, got {methods}.")
  for name, minimum in (("seeds", 1), ("epochs", 1), ("hidden", 1), ("diva_interval", 1),
                        ("diva_start", 0), ("train_batch_size", 1)):
    common.check_int(config, name, minimum)
  for name in ("learning_rate", "diva_lr", "gce_q", "temperature"):
    common.check_float(config, name, low=0.0, low_open=True)
  if config.gce_q > 1:
    raise ConfigError(f"gce_q must be in (0, 1], got {config.gce_q}.")
  common.check_float(config, "reg_multiplier", low=0.0, low_open=True)


# ------------------------------------------------------------------------------------------
# The head: a plain-JAX MLP on the frozen features.


def init_head(key, d: int, hidden: int, c: int) -> dict:
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (d, hidden)) * np.sqrt(2.0 / d),
          "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, c)) * np.sqrt(1.0 / hidden),
          "b2": jnp.zeros(c)}


def hidden_features(params, x):
  """The penultimate representation [n, hidden]."""
  return jax.nn.relu(x @ params["w1"] + params["b1"])


def logits(params, x):
  return hidden_features(params, x) @ params["w2"] + params["b2"]


def per_sample_loss(params, x, y, loss: str, q: float):
  logp = jax.nn.log_softmax(logits(params, x))
  if loss == "gce":  # (1 - p_y^q) / q
    return (1.0 - jnp.exp(q * jnp.take_along_axis(logp, y[:, None], 1)[:, 0])) / q
  return -jnp.take_along_axis(logp, y[:, None], 1)[:, 0]


def _lift(x):
  """Features for the LOO head: the hidden activations standardised, with a bias column."""
  x = np.asarray(x, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  return np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float32)


def train_one(config, method, train_x, labels, true_labels, flipped, test_x, test_labels,
              num_classes, seed, one_shot_keep=None) -> dict:
  """Trains the head with one method; per-epoch curves and the final numbers."""
  n = len(labels)
  rng = np.random.default_rng(seed)
  params = init_head(jax.random.PRNGKey(seed), train_x.shape[1], int(config.hidden),
                     num_classes)
  opt = optax.adam(float(config.learning_rate))
  opt_state = opt.init(params)
  y = jnp.asarray(true_labels if method == "true_labels" else labels)
  x = jnp.asarray(train_x)
  loss_kind = "gce" if method == "gce" else "ce"
  tx = training.weight_optimizer(float(config.diva_lr))
  state = training.init(n, tx)
  fixed = {"oracle": ~flipped, "one_shot": one_shot_keep}.get(method)
  if fixed is not None:
    state = state._replace(weights=jnp.asarray(fixed, jnp.float32))
  q = float(config.gce_q)

  @jax.jit
  def step(params, opt_state, xb, yb, wb):
    def f(p):
      return training.weighted_mean(per_sample_loss(p, xb, yb, loss_kind, q), wb)
    loss, grads = jax.value_and_grad(f)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda p, xs: jnp.argmax(logits(p, xs), 1))
  hidden = jax.jit(hidden_features)
  bs = int(config.train_batch_size)
  # Compile the parameter step for both batch sizes before timing (results discarded).
  for size in {n // max(1, n // bs), -(-n // max(1, n // bs))}:
    jax.block_until_ready(step(params, opt_state, x[:size], y[:size], state.weights[:size]))
  curves = {"epoch": [], "test_error": [], "mean_weight_noisy": [], "mean_weight_clean": []}
  derivative_seconds, train_seconds = 0.0, 0.0
  for epoch in range(int(config.epochs)):
    if (method == "diva" and epoch >= int(config.diva_start)
        and (epoch - int(config.diva_start)) % int(config.diva_interval) == 0):
      t0 = time.perf_counter()
      feats = _lift(hidden(params, x))
      state = training.update(state, tx, feats, np.eye(num_classes, dtype=np.float32)[labels],
                              loss="ce", temperature=float(config.temperature),
                              reg_multiplier=float(config.reg_multiplier))
      jax.block_until_ready(state.weights)
      derivative_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    w = state.weights
    for idx in np.array_split(rng.permutation(n), max(1, n // bs)):
      params, opt_state, _ = step(params, opt_state, x[idx], y[idx], w[idx])
    jax.block_until_ready(params)
    train_seconds += time.perf_counter() - t0
    wn = np.asarray(state.weights)
    curves["epoch"].append(epoch + 1)
    curves["test_error"].append(
        100 * float(np.mean(np.asarray(predict(params, jnp.asarray(test_x))) != test_labels)))
    curves["mean_weight_noisy"].append(float(wn[flipped].mean()) if flipped.any() else None)
    curves["mean_weight_clean"].append(float(wn[~flipped].mean()))
  final_w = np.asarray(state.weights)
  f1 = (detect.detection_metrics((final_w < 0.5) - 0.5, flipped).f1
        if flipped.any() and method in ("diva", "one_shot") else None)
  return {"curves": curves, "test_error": curves["test_error"][-1], "detection_f1": f1,
          "train_seconds": train_seconds, "derivative_seconds": derivative_seconds,
          "flagged": int(np.sum(final_w < 0.5))}


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs the comparison; returns the summary (also in <workdir>/metrics.json)."""
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  wd.commit()
  rows, curve_rows = [], {k: [] for k in ("dataset", "noise", "seed", "method", "epoch",
                                          "test_error", "mean_weight_noisy",
                                          "mean_weight_clean")}
  for dataset, max_train in common.check_settings(config):
    c = ml_collections.ConfigDict(config.to_dict())
    c.dataset, c.max_train, c.linearize = dataset, max_train, "last_layer"
    c.cache_dir = config.cache_dir or wd.file("cache")
    sub = common.Workdir(os.path.join(workdir, "settings", f"{dataset}_{max_train}"), c,
                         overwrite=True)
    train, test = common.prepare_features(c, sub)
    k = len(train.class_names)
    for kind, rate in parse_noise(config.noise):
      for seed in range(int(config.seeds)):
        c.noise_type, c.noise_rate, c.seed = kind, rate, seed
        noisy, flipped = common.noisy_labels(c, train.labels, k)
        keep = None
        if "one_shot" in config.methods:
          keep = ~label_issues.find_label_issues(
              noisy, features=train.features, num_classes=k,
              temperature=float(config.temperature)).flagged
        for method in config.methods:
          name = f"{dataset}_{max_train}-{kind}{rate:g}-seed{seed}-{method}"
          res = wd.stage_json(name, lambda: train_one(
              c, method, train.features, noisy, train.labels, flipped, test.features,
              test.labels, k, seed, keep), collective=False)
          rows.append({"dataset": dataset, "noise": f"{kind}:{rate:g}", "seed": seed,
                       "method": method, **{key: v for key, v in res.items()
                                            if key != "curves"}})
          cv = res["curves"]
          for i in range(len(cv["epoch"])):
            for key, val in (("dataset", dataset), ("noise", f"{kind}:{rate:g}"),
                             ("seed", seed), ("method", method)):
              curve_rows[key].append(val)
            for key in ("epoch", "test_error", "mean_weight_noisy", "mean_weight_clean"):
              v = cv[key][i]
              curve_rows[key].append(np.nan if v is None else v)
  wd.write_json("results.json", rows)
  wd.write_csv("curves.csv", {k_: np.asarray(v) for k_, v in curve_rows.items()})
  summary = _summary(rows)
  wd.write_csv("summary.csv", {k_: np.asarray(v) for k_, v in summary.items()})
  if config.plots:
    wd.savefig("curves.png", _plot(curve_rows, config.methods))
  metrics = {"rows": len(rows), "summary": [dict(zip(summary, vals))
                                            for vals in zip(*summary.values())]}
  wd.write_json("metrics.json", metrics)
  if common.is_main_process():
    _print(summary)
  return metrics


def _summary(rows) -> dict:
  """Mean and std over seeds per (dataset, noise, method)."""
  cells = {}
  for r in rows:
    cells.setdefault((r["dataset"], r["noise"], r["method"]), []).append(r)
  out = {k: [] for k in ("dataset", "noise", "method", "seeds", "test_error_mean",
                         "test_error_std", "detection_f1_mean", "overhead_vs_plain")}
  plain_time = {(r["dataset"], r["noise"], r["seed"]): r["train_seconds"]
                for r in rows if r["method"] == "plain"}
  for (dataset, noise, method), rs in cells.items():
    errs = np.array([r["test_error"] for r in rs])
    f1s = [r["detection_f1"] for r in rs if r["detection_f1"] is not None]
    over = [(r["train_seconds"] + r["derivative_seconds"])
            / plain_time[(dataset, noise, r["seed"])] - 1.0
            for r in rs if (dataset, noise, r["seed"]) in plain_time]
    out["dataset"].append(dataset)
    out["noise"].append(noise)
    out["method"].append(method)
    out["seeds"].append(len(rs))
    out["test_error_mean"].append(float(errs.mean()))
    out["test_error_std"].append(float(errs.std()))
    out["detection_f1_mean"].append(float(np.mean(f1s)) if f1s else np.nan)
    out["overhead_vs_plain"].append(float(np.mean(over)) if over else np.nan)
  return out


def _plot(curve_rows, methods):
  plt = plots._plt()  # pylint: disable=protected-access
  settings = sorted({(d, n) for d, n in zip(curve_rows["dataset"], curve_rows["noise"])})
  fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.4), squeeze=False)
  cols = {k: np.asarray(v) for k, v in curve_rows.items()}
  for j, (dataset, noise) in enumerate(settings):
    for method in methods:
      sel = (cols["dataset"] == dataset) & (cols["noise"] == noise) & (cols["method"] == method)
      epochs = np.unique(cols["epoch"][sel])
      mean = lambda key: [np.nanmean(cols[key][sel & (cols["epoch"] == e)]) for e in epochs]
      axes[0, j].plot(epochs, mean("test_error"), label=method)
      if method == "diva":
        axes[1, j].plot(epochs, mean("mean_weight_noisy"), "r", label="diva: noisy samples")
        axes[1, j].plot(epochs, mean("mean_weight_clean"), "b", label="diva: clean samples")
    axes[0, j].set_title(f"{dataset}, {noise}")
    axes[0, j].set_ylabel("test error (%)")
    axes[1, j].set_xlabel("epoch")
    axes[1, j].set_ylabel("mean weight")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def _print(summary) -> None:
  print("== train_with_diva: test error % (mean +- std over seeds), detection F1, time overhead")
  for i in range(len(summary["method"])):
    f1 = summary["detection_f1_mean"][i]
    print(f"  {summary['dataset'][i]:>12} {summary['noise'][i]:>13} {summary['method'][i]:>11}"
          f"  {summary['test_error_mean'][i]:6.2f} +- {summary['test_error_std'][i]:4.2f}"
          + (f"  F1 {f1:.3f}" if np.isfinite(f1) else "")
          + f"  overhead {100 * summary['overhead_vs_plain'][i]:+.0f}%")
