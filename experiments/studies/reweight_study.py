"""Which reweighting rule lowers the test error, and by more than chance?

For each setting `dataset:backbone:per_class:max_train` (per_class images of each class drawn
per seed from the first max_train train images, 0 = all of them) the features are extracted
once (cached), then for each noise rate and seed:

  * the ridge head is fit at the exact-LOO (squared-error) reg of the training set; its test
    error with all weights 1 is the baseline;
  * every rule of the grid is run: a step rule (`raw<eta>`: the paper's raw step on the summed
    LOO loss, a <- a - eta n dL_mean/da; `norm<lr>`: `curation.normalized_sgd(lr)`, the
    largest weight change per step is lr; `ls<lr>`: `curation.reweight(line_search=True)`,
    backtracking on the LOO loss from a largest change lr), a loss (`mse`, `ce@T`) whose own
    exact-LOO reg times a multiplier is where the derivative is taken, and a number of steps
    (prefixes of one trajectory); the head refit with the final weights gives the change in
    test error (points);
  * the random control of each rule: the same weights randomly permuted over the samples (the
    same distribution of |w - 1|, random assignment), `random_repeats` permutations averaged;
  * selection without the test split: the training set is split (stratified, seeded) into
    `validation_folds` folds; every rule, and "none", is run on all folds but one and scored by
    the error on the held-out fold, summed over folds (ties: the validation squared error,
    then "none"); the chosen rule is run on the whole training set and its test change recorded
    ("selected by validation"). The LOO loss itself cannot choose the step size or the number
    of steps: it decreases along every trajectory (the estimate is biased after the first
    step), so it always picks the largest change.

Outputs in the workdir: results.json (every run), summary.csv and summary.md (mean +- std over
seeds of the test-error change of each rule and of its random control, per setting and noise).
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np

from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax import io_utils
from diva_jax.curation import steps as curation
import diva_jax
import optax
import ml_collections

BACKBONES = ("efficientnet_lite0", "pixels")


def parse_setting(s: str):
  parts = str(s).split(":")
  if (len(parts) != 4 or not parts[0] or parts[1] not in BACKBONES
      or not parts[2].isdigit() or not parts[3].isdigit()):
    raise ConfigError(f"settings entries are 'dataset:backbone:per_class:max_train' with "
                      f"backbone in {BACKBONES} and integers >= 0 (0 = all), got {s!r}.")
  return parts[0], parts[1], int(parts[2]), int(parts[3])


def parse_loss(s: str):
  """'mse' -> ('mse', 1.0); 'ce@0.3' -> ('ce', 0.3)."""
  name, _, t = str(s).partition("@")
  if name == "mse" and not t:
    return "mse", 1.0
  try:
    temp = float(t)
  except ValueError:
    temp = -1.0
  if name != "ce" or not temp > 0:
    raise ConfigError(f"losses entries are 'mse' or 'ce@T' with a temperature T > 0, got {s!r}.")
  return "ce", temp


def parse_rule(s: str):
  """'raw0.1' / 'norm0.2' / 'ls1.0' -> (kind, size > 0)."""
  for kind in ("raw", "norm", "ls"):
    if str(s).startswith(kind):
      try:
        v = float(str(s)[len(kind):])
      except ValueError:
        break
      if v > 0 and np.isfinite(v):
        return kind, v
  raise ConfigError(f"step_rules entries are 'raw<eta>', 'norm<lr>' or 'ls<lr>' with a "
                    f"number > 0, got {s!r}.")


def validate(config) -> None:
  common.check_common(config)
  if not config.settings:
    raise ConfigError("settings must list at least one 'dataset:backbone:per_class:max_train'.")
  for s in config.settings:
    common.check_dataset(parse_setting(s)[0])
  if not config.noise_rates or not all(0 <= float(r) < 1 for r in config.noise_rates):
    raise ConfigError(f"noise_rates must be numbers in [0, 1), got {tuple(config.noise_rates)}.")
  common.check_int(config, "seeds", 1)
  common.check_int(config, "random_repeats", 1)
  common.check_int(config, "validation_folds", 2)
  common.check_int(config, "image_size", 8)
  common.check_int(config, "batch_size", 1)
  if not config.losses or not config.step_rules:
    raise ConfigError("losses and step_rules must each list at least one entry.")
  for s in config.losses:
    parse_loss(s)
  for s in config.step_rules:
    parse_rule(s)
  if not config.reg_multipliers or not all(float(m) > 0 for m in config.reg_multipliers):
    raise ConfigError(f"reg_multipliers must be numbers > 0, got {tuple(config.reg_multipliers)}.")
  steps = list(config.steps)
  if not steps or not all(isinstance(k, int) and k >= 1 for k in steps):
    raise ConfigError(f"steps must list integers >= 1, got {tuple(steps)}.")
  if config.default_rule and config.default_rule not in rule_names(config):
    raise ConfigError(f"default_rule {config.default_rule!r} is not a rule of the grid "
                      f"(e.g. {rule_names(config)[0]!r}).")


def rule_names(config) -> list[str]:
  return [f"{loss}/x{float(m):g}/{rule}/{k}" for loss in config.losses
          for m in config.reg_multipliers for rule in config.step_rules
          for k in sorted(set(config.steps))]


def _trajectories(x, t, config):
  """{rule name: final weights [n]} for every rule of the grid on (x, t)."""
  n = len(t)
  out = {}
  most = max(config.steps)
  for loss_s in config.losses:
    loss, temp = parse_loss(loss_s)
    reg = float(diva_jax.select_reg(t, features=x, loss=loss, temperature=temp).reg)
    for m in config.reg_multipliers:
      for rule_s in config.step_rules:
        kind, size = parse_rule(rule_s)
        kw = dict(features=x, reg=reg * float(m), loss=loss, temperature=temp)
        if kind == "ls":
          kw.update(line_search=True, learning_rate=size)
        elif kind == "norm":
          kw.update(learning_rate=size)
        else:  # the paper's raw step on the summed loss: eta * n on the mean loss
          kw.update(optimizer=optax.sgd(size * n))
        w = np.ones(n, np.float32)
        done = 0
        for k in sorted(set(config.steps)):
          w = curation.reweight(w, t, steps=k - done, **kw).weights
          done = k
          out[f"{loss_s}/x{float(m):g}/{rule_s}/{k}"] = np.asarray(w, np.float32)
        assert done == most
  return out


def _row_space(x, test):
  """With more feature columns than samples, the exact n-column equivalent of the problem:
  x = U S V^T -> x V = U S, test -> test V. Every ridge fit on rows of x (with any weights
  and reg) has its coefficients in the row space of x, so LOO values, derivatives and test
  predictions are unchanged; the primal solves shrink from d to n columns."""
  if x.shape[1] <= x.shape[0]:
    return x, test
  _, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  proj = lambda z: (np.asarray(z, np.float64) @ vt.T).astype(np.float32)
  return proj(x), test._replace(features=proj(test.features))


def _fit(weights, t, x, reg, xt):
  return np.asarray(diva_jax.ridge_predict(np.asarray(weights, np.float32), t, features=x,
                                           reg=reg, test_features=xt))


def _error(pred, labels) -> float:
  return float(np.mean(np.argmax(pred, 1) != labels))


def _subset(labels, per_class, rng):
  if per_class == 0:
    return np.arange(len(labels))
  idx = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ConfigError(f"class {c} has {len(members)} train images, fewer than per_class = "
                        f"{per_class}.")
    idx.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(idx))


def _folds(labels, folds, rng):
  """Stratified fold index [n] in [0, folds): each class's members dealt round-robin after a
  seeded shuffle."""
  fold = np.empty(len(labels), int)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    fold[members] = np.arange(len(members)) % folds
  return fold


def _select_by_validation(x, t, labels, config, rng):
  """The rule (or 'none') with the lowest k-fold validation error of fits on the other folds
  (ties: the lower validation squared error, then 'none')."""
  fold = _folds(labels, int(config.validation_folds), rng)
  err, sq = {}, {}
  for f in range(int(config.validation_folds)):
    fit, val = fold != f, fold == f
    xf, tf = x[fit], t[fit]
    reg = float(diva_jax.select_reg(tf, features=xf).reg)
    for name, w in {"none": np.ones(len(tf), np.float32),
                    **_trajectories(xf, tf, config)}.items():
      pred = _fit(w, tf, xf, reg, x[val])
      err[name] = err.get(name, 0.0) + float(np.sum(np.argmax(pred, 1) != labels[val]))
      sq[name] = sq.get(name, 0.0) + float(np.sum((pred - t[val]) ** 2))
  scores = {k: (err[k] / len(labels), sq[k] / len(labels), k != "none") for k in err}
  return min(scores, key=scores.get), scores


def _one_run(config, setting, per_class, train, test, num_classes, c, rate, seed, names):
  """The rows of one (setting, noise rate, seed): every rule, and the validation choice."""
  rows = []
  rng = np.random.default_rng([seed, 7])

  idx = _subset(train.labels, per_class, rng)
  x, clean = train.features[idx], train.labels[idx]
  x, test = _row_space(x, test)
  c.noise_rate, c.seed, c.noise_type = float(rate), seed, "uniform"
  labels, flipped = common.noisy_labels(c, clean, num_classes)
  t = common.one_hot(labels, num_classes)
  reg = float(diva_jax.select_reg(t, features=x).reg)
  before = _error(_fit(np.ones(len(t)), t, x, reg, test.features), test.labels)
  chosen, scores = _select_by_validation(x, t, labels, config, rng)
  weights = _trajectories(x, t, config)
  base = {"setting": setting, "noise_rate": float(rate), "seed": seed, "n": len(t),
          "test_error_before": 100 * before}
  changes = {"none": 0.0}
  for name in names:
    w = weights[name]
    err = _error(_fit(w, t, x, reg, test.features), test.labels)
    changes[name] = 100 * (err - before)
    ctrl = [_error(_fit(rng.permutation(w), t, x, reg, test.features), test.labels)
            for _ in range(int(config.random_repeats))]
    rows.append({**base, "rule": name, "change": 100 * (err - before),
                 "control_change": 100 * (float(np.mean(ctrl)) - before),
                 "mean_abs_weight_change": float(np.mean(np.abs(w - 1))),
                 "noisy_weight": float(w[flipped].mean()) if flipped.any() else None,
                 "clean_weight": float(w[~flipped].mean()),
                 "validation_error": 100 * scores[name][0]})
  rows.append({**base, "rule": "selected by validation", "chosen": chosen,
               "change": changes[chosen],
               "control_change": None, "validation_error": 100 * scores[chosen][0],
               "validation_error_none": 100 * scores["none"][0]})
  return rows


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  wd.commit()
  names = rule_names(config)
  rows = []
  for setting in config.settings:
    dataset, backbone, per_class, max_train = parse_setting(setting)
    c = ml_collections.ConfigDict(config.to_dict())
    c.dataset, c.backbone, c.max_train, c.max_test = dataset, backbone, max_train, 0
    c.linearize, c.linearize_params, c.jacobian_width = "last_layer", "", 1
    c.cache_dir = config.cache_dir or wd.file("cache")
    sub = common.Workdir(os.path.join(workdir, "settings", setting.replace(":", "_")), c,
                         overwrite=True)
    train, test = common.prepare_features(c, sub)
    num_classes = len(train.class_names)
    for rate in config.noise_rates:
      for seed in range(int(config.seeds)):
        # Each (setting, noise, seed) is a resumable stage: a rerun computes only the rest.
        rows.extend(wd.stage_json(
            f"{setting.replace(':', '_')}_noise{float(rate):g}_seed{seed}",
            lambda: _one_run(config, setting, per_class, train, test, num_classes, c,
                             float(rate), seed, names)))
        logging.info("reweight study: %s noise %g seed %d done", setting, rate, seed)
  wd.write_json("results.json", rows)
  summary = summarize(rows, config.default_rule)
  wd.write_csv("summary.csv", {k: [r[k] for r in summary] for k in summary[0]})
  if common.is_main_process():
    table = markdown(summary)
    io_utils.atomic_write_text(wd.file("summary.md"), table + "\n")
    print(table)
  metrics = {"runs": rows, "summary": summary}
  wd.write_json("metrics.json", metrics)
  return metrics


def summarize(rows, default_rule=""):
  """Per (setting, noise, rule): mean and std over seeds of the change and its control."""
  cells = {}
  for r in rows:
    cells.setdefault((r["setting"], r["noise_rate"], r["rule"]), []).append(r)
  out = []
  for (setting, rate, rule), rs in cells.items():
    ch = np.array([r["change"] for r in rs])
    ctrl = np.array([r["control_change"] for r in rs if r["control_change"] is not None])
    row = {"setting": setting, "noise_rate": rate, "rule": rule, "seeds": len(rs),
           "test_error_before": float(np.mean([r["test_error_before"] for r in rs])),
           "change_mean": float(ch.mean()), "change_std": float(ch.std()),
           "control_mean": float(ctrl.mean()) if ctrl.size else float("nan"),
           "control_std": float(ctrl.std()) if ctrl.size else float("nan"),
           "mean_abs_weight_change": float(np.mean([r.get("mean_abs_weight_change", 0.0)
                                                    for r in rs])),
           "default": rule == default_rule,
           "chosen": ",".join(sorted({r["chosen"] for r in rs})) if "chosen" in rs[0] else ""}
    # Beats chance: a negative change, below the control's mean by more than its spread.
    row["beats_control"] = bool(ctrl.size and row["change_mean"] < 0 and
                                row["change_mean"] < row["control_mean"] - row["control_std"])
    out.append(row)
  return out


def markdown(summary) -> str:
  lines = ["| setting | noise | rule (loss/reg multiple/step rule/steps) | error before % | "
           "change (points) | random control | mean abs(w-1) | beats control |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in summary:
    ctrl = ("" if np.isnan(r["control_mean"])
            else f"{r['control_mean']:+.2f} +- {r['control_std']:.2f}")
    rule = r["rule"] + (" (default)" if r["default"] else "")
    if r["chosen"]:
      rule += f" [chose: {r['chosen']}]"
    lines.append(f"| {r['setting']} | {r['noise_rate']:.0%} | {rule} | "
                 f"{r['test_error_before']:.2f} | {r['change_mean']:+.2f} +- "
                 f"{r['change_std']:.2f} | {ctrl} | {r['mean_abs_weight_change']:.3f} | "
                 f"{'yes' if r['beats_control'] else ''} |")
  return "\n".join(lines)
