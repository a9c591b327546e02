"""The automatic threshold against the sign rule: detection F1 over datasets, noise rates and
seeds (the threshold table in docs/).

For each (dataset, max_train) setting the features are extracted once (cached); for each noise
rate and seed the labels are flipped (uniform noise), reg is chosen by exact LOO, and three cuts
of the same derivative ranking are scored against the noise mask: the sign rule (derivative >
0), the automatic threshold (the `estimate_num_issues` most harmful of those) and the oracle
(the true number of noisy labels, also capped by the sign rule); for n <= cleanlab_max_n also
cleanlab on 5-fold CV logistic-regression probabilities. With `test_errors` (the default), also
the test error (%) of the ridge head before curation, after removing the automatically flagged
samples and after removing exactly the noisy ones (the oracle), each refit with reg re-chosen by
exact LOO on the kept samples (as the outlier-rejection binary does). With `choose_multiplier`
("loo" or "cv"), also the multiplier chosen by `diva_jax.choose_detection_reg` from
`multiplier_grid` (no test labels, no noise mask), the F1 and test error of removing what it
flags, and that error minus the oracle's. Outputs: results.json
(every run) and summary.csv (mean and std per cell).
"""

from __future__ import annotations


import numpy as np

from diva_jax.curation import label_issues
from diva_jax.app import common
from diva_jax.app.errors import ConfigError
import diva_jax
import ml_collections


def _cleanlab_cv_issues(feats, noisy, config):
  """cleanlab's usual recipe: find_label_issues on 5-fold CV logistic-regression
  probabilities (the outlier-rejection binary's baseline)."""
  from cleanlab.filter import find_label_issues
  return find_label_issues(noisy, common.cv_logistic_probs(feats, noisy, config), n_jobs=1)


def validate(config) -> None:
  common.check_common(config)
  common.check_settings(config)
  if not config.noise_rates or not all(0 < float(r) < 1 for r in config.noise_rates):
    raise ConfigError(f"noise_rates must be numbers in (0, 1), got {tuple(config.noise_rates)}.")
  common.check_int(config, "seeds", 1)
  common.check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  common.check_int(config, "cleanlab_max_n", 0)
  common.check_int(config, "max_test", 0)
  if not isinstance(config.test_errors, bool):
    raise ConfigError(f"test_errors must be True or False, got {config.test_errors!r}.")
  common.check_choice(config, "choose_multiplier", ("", "loo", "cv"))
  grid = tuple(config.multiplier_grid)
  if not grid or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0
                         for m in grid):
    raise ConfigError(f"multiplier_grid must list numbers > 0, got {grid}.")
  common.check_int(config, "choice_folds", 2)
  common.check_choice(config, "choice_criterion", ("mse", "error"))
  common.check_choice(config, "outer", diva_jax.loo.closed_form.OUTERS)


def _setting_config(config, dataset, max_train):
  c = ml_collections.ConfigDict(config.to_dict())
  # Without test errors only a token test split is embedded (10 images): detection alone.
  c.dataset, c.max_train = dataset, max_train
  c.max_test = config.max_test if config.test_errors else 10
  c.noise_type, c.linearize = "uniform", "last_layer"
  return c


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  wd.commit()
  rows = []
  for dataset, max_train in common.check_settings(config):
    c = _setting_config(config, dataset, max_train)
    sub = common.setting_workdir(workdir, wd, config, c, dataset, max_train)
    train, test = common.prepare_features(c, sub)
    feats, num_classes = train.features, len(train.class_names)
    n = len(train.labels)
    ones = np.ones(n, np.float32)
    for rate in config.noise_rates:
      for seed in range(int(config.seeds)):
        c.noise_rate, c.seed = float(rate), seed
        noisy, flipped = common.noisy_labels(c, train.labels, num_classes)
        t = common.one_hot(noisy, num_classes)
        issues = label_issues.find_label_issues(
            noisy, features=feats, num_classes=num_classes, loss=c.loss,
            temperature=c.temperature, detection_reg_multiplier=common.detection_multiplier(c),
            outer=c.outer)
        reg, d, k, auto = issues.reg, issues.derivative, issues.num_issues, issues.flagged
        f1 = lambda mask: diva_jax.detection_metrics(mask - 0.5, flipped).f1
        if not flipped.any():  # nothing to detect at this rate and n
          continue
        counts = np.bincount(noisy)
        cleanlab = (f1(_cleanlab_cv_issues(feats, noisy, c))
                    if n <= config.cleanlab_max_n and counts[counts > 0].min() >= 5 else None)
        errors = {}
        if config.test_errors:
          def refit_error(keep):  # reg re-chosen by exact LOO on the kept samples; in %
            err = label_issues.refit_test_error(
                keep, noisy, features=feats, test_features=test.features,
                test_labels=test.labels,
                reg=c.reg if c.reg > 0 else None, loss=c.loss, temperature=c.temperature,
                num_classes=num_classes)
            return None if np.isnan(err) else 100 * err
          errors = {"test_error_before": 100 * common.test_error(
                        ones, t, feats, reg, test.features, test.labels),
                    "test_error_auto_removal": refit_error(~auto),
                    "test_error_sign_removal": refit_error(~(d > 0)),
                    "test_error_oracle_removal": refit_error(~flipped)}
          errors["auto_minus_oracle"] = (
              None if errors["test_error_auto_removal"] is None
              else errors["test_error_auto_removal"] - errors["test_error_oracle_removal"])
        if config.choose_multiplier:
          ch = diva_jax.choose_detection_reg(
              t, noisy, features=feats, reg=reg, multipliers=tuple(config.multiplier_grid),
              method=config.choose_multiplier, loss=c.loss, temperature=c.temperature,
              criterion=config.choice_criterion, folds=int(config.choice_folds), seed=seed)
          errors.update({"chosen_multiplier": ch.multiplier, "f1_chosen": f1(ch.flagged),
                         "choice_scores": [float(e) for e in ch.errors]})
          if config.test_errors:
            errors["test_error_chosen_removal"] = refit_error(~ch.flagged)
            errors["chosen_minus_oracle"] = (
                None if errors["test_error_chosen_removal"] is None
                else errors["test_error_chosen_removal"] - errors["test_error_oracle_removal"])
        rows.append({
            "dataset": dataset, "n": n, "noise_rate": float(rate), "seed": seed,
            "noisy": int(flipped.sum()), "estimated": k, "sign_flagged": int((d > 0).sum()),
            "f1_sign": f1(d > 0),
            "f1_auto": f1(auto),
            "f1_oracle_k": f1(diva_jax.detect_detrimental(d, num_flagged=int(flipped.sum()))),
            "f1_cleanlab_cv": cleanlab, **errors,
        })
  wd.write_json("results.json", rows)
  cells = {}
  for r in rows:
    cells.setdefault((r["dataset"], r["n"], r["noise_rate"]), []).append(r)
  summary = {"dataset": [], "n": [], "noise_rate": [], "noisy": [], "estimated": []}
  keys = ("f1_sign", "f1_auto", "f1_oracle_k", "f1_cleanlab_cv")
  if config.test_errors:
    keys += ("test_error_before", "test_error_auto_removal", "test_error_sign_removal",
             "test_error_oracle_removal", "auto_minus_oracle")
  if config.choose_multiplier:
    keys += ("chosen_multiplier", "f1_chosen") + (
        ("test_error_chosen_removal", "chosen_minus_oracle") if config.test_errors else ())
  for key in keys:
    summary[f"{key}_mean"], summary[f"{key}_std"] = [], []
  for (dataset, n, rate), rs in cells.items():
    summary["dataset"].append(dataset)
    summary["n"].append(n)
    summary["noise_rate"].append(rate)
    summary["noisy"].append(float(np.mean([r["noisy"] for r in rs])))
    summary["estimated"].append(float(np.mean([r["estimated"] for r in rs])))
    for key in keys:
      vals = [r[key] for r in rs if r.get(key) is not None]
      summary[f"{key}_mean"].append(float(np.mean(vals)) if vals else float("nan"))
      summary[f"{key}_std"].append(float(np.std(vals)) if vals else float("nan"))
  wd.write_csv("summary.csv", summary)
  if common.is_main_process():
    print("dataset n noise | noisy estimated | F1 sign | F1 auto | F1 oracle-k | "
          "F1 cleanlab-CV" + (" | test error % before | after auto removal | after sign "
                              "removal | after oracle removal | auto - oracle"
                              if config.test_errors else "")
          + (" | chosen multiplier | F1 chosen" + (" | after chosen removal | chosen - oracle"
                                                    if config.test_errors else "")
             if config.choose_multiplier else ""))
    for i in range(len(summary["dataset"])):
      print(f"{summary['dataset'][i]} {summary['n'][i]} {summary['noise_rate'][i]:.0%} | "
            f"{summary['noisy'][i]:.0f} {summary['estimated'][i]:.0f} | " + " | ".join(
                f"{summary[k + '_mean'][i]:.3f} +- {summary[k + '_std'][i]:.3f}"
                for k in keys))
  metrics = {"runs": rows, "summary": summary}
  wd.write_json("metrics.json", metrics)
  return metrics
