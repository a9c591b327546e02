"""Outlier / mislabel rejection with the dataset derivative, and reweighting.

Steps (each a resumable stage of the workdir):
  1. features of the train and test split (backbone, cached);
  2. label noise on the train split (uniform or pairwise, seeded);
  3. reg (given, or the minimiser of the exact LOO error: computable without the mask);
  4. the dataset derivative at weight 1; flag derivative > eps (threshold 'sign'), or only the
     most harmful of those, as many as `diva_jax.estimate_num_issues` estimates from the
     exact LOO probabilities (threshold 'auto', the default: no noise mask needed);
  5. baselines on the same features: cleanlab fed our exact LOO class probabilities,
     cleanlab fed 5-fold cross-validated logistic-regression probabilities (its usual recipe),
     ranking by the per-sample LOO loss, random scores; each timed (a baseline that cannot
     run on the data, e.g. 5-fold CV with a class of fewer than 5 samples, is skipped with
     a note in metrics.json);
  6. test error of the ridge head before curation, after 1-3 reweighting steps and after
     removing the flagged samples (none if every sample is flagged: noted in metrics.json);
  7. sensitivity of detection and test error to reg and the loss.
Outputs: config.json, metrics.json, per_sample.csv, derivative_histogram.png,
harmful_helpful.png, and a summary on stdout.
"""

from __future__ import annotations

import time

from absl import logging
import numpy as np

import diva_jax
from diva_jax.curation import steps as curation
from diva_jax.curation import label_issues
from diva_jax.app import common
from diva_jax.app import plots
import diva_jax as dj

METRIC_KEYS = ("detection_f1", "detection_auroc", "test_error_before", "test_error_after")


def validate(config) -> None:
  """Every config value, before anything is read or written (common.ConfigError)."""
  common.check_common(config)
  common.check_float(config, "noise_rate", low=0.0, high=1.0, high_open=True)
  common.check_choice(config, "noise_type", ("uniform", "pairwise", "none"))
  common.check_float(config, "eps")
  common.check_choice(config, "threshold", ("auto", "sign"))
  common.check_int(config, "reweight_steps", 0)
  common.check_float(config, "reweight_lr", low=0.0, low_open=True)
  common.check_int(config, "logistic_max_iter", 1)
  common.check_float(config, "logistic_c", low=0.0, low_open=True)
  for loss in config.sensitivity_losses:
    common.check_choice(config, "sensitivity_losses", dj.LOSSES, value=loss)
  for m in config.sensitivity_reg_multipliers:
    common.check_float(config, "sensitivity_reg_multipliers", low=0.0, low_open=True, value=m)
  common.check_detection_views(config)


def _baselines(config, feats, targets, noisy, flipped, reg, num_classes):
  """Detection metrics and wall times of the peer methods, on the same features."""
  from cleanlab.filter import find_label_issues
  from cleanlab.rank import get_label_quality_scores
  out = {}
  n = len(noisy)

  start = time.perf_counter()
  loo = np.asarray(diva_jax.loo_predictions(np.ones(n, np.float32), targets, features=feats,
                                            reg=reg))
  t_loo = time.perf_counter() - start
  probs = common.softmax(loo, config.temperature)

  def cleanlab_exact_loo():
    start = time.perf_counter()
    issues = find_label_issues(noisy, probs, n_jobs=1)  # no fork(): JAX is multithreaded
    score = -get_label_quality_scores(noisy, probs)
    return _metrics(issues.astype(float) - 0.5, flipped, score,
                    t_loo + time.perf_counter() - start)

  def cleanlab_cv_logistic():
    counts = np.bincount(noisy)
    if counts[counts > 0].min() < 5:
      raise ValueError(f"5-fold CV needs >= 5 samples of every class present, the smallest "
                       f"has {counts[counts > 0].min()}")
    start = time.perf_counter()
    cv_probs = common.cv_logistic_probs(feats, noisy, config)
    issues = find_label_issues(noisy, cv_probs, n_jobs=1)
    score = -get_label_quality_scores(noisy, cv_probs)
    return _metrics(issues.astype(float) - 0.5, flipped, score, time.perf_counter() - start)

  notes = {}
  methods = {"cleanlab_exact_loo": cleanlab_exact_loo}
  if config.cv_logistic:
    methods["cleanlab_cv_logistic"] = cleanlab_cv_logistic
  for name, fn in methods.items():
    # A third-party baseline that cannot run on these data (tiny n, a class with a single
    # sample...) is skipped with a note rather than taking the run down after the DIVA stages.
    try:
      out[name] = fn()
    except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError) as e:
      notes[name] = f"skipped: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
      logging.warning("baseline %s %s", name, notes[name])

  start = time.perf_counter()
  loo_loss = np.sum((loo - targets) ** 2, 1)
  out["loo_loss_ranking"] = _metrics(None, flipped, loo_loss, t_loo + time.perf_counter() - start,
                                     top_k=True)
  rng = np.random.default_rng(config.seed + 1)
  out["random"] = _metrics(None, flipped, rng.uniform(size=n), 0.0, top_k=True)
  return out, notes


def _metrics(flag_scores, flipped, rank_scores, seconds, top_k=False):
  """F1 of a flag (flag_scores > 0, or for rankings the top-k with k = #noisy: an oracle k
  that a user would not know, so it flatters rankings) + AUROC."""
  if top_k:
    k = int(flipped.sum())
    thresh = np.sort(rank_scores)[::-1][k - 1] if k > 0 else np.inf
    flag_scores = np.where(rank_scores >= thresh, 1.0, -1.0)
  m = curation.detection_metrics(flag_scores, flipped, eps=0.0)
  return {"detection_f1": m.f1, "detection_auroc": curation.auroc(rank_scores, flipped),
          "num_flagged": m.num_flagged, "seconds": seconds}


def _none_if_nan(v):
  v = float(v)
  return None if np.isnan(v) else v


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs the experiment; returns the metrics (also written to <workdir>/metrics.json)."""
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  timings = {}

  start = time.perf_counter()
  train, test = common.prepare_features(config, wd)
  timings["features_s"] = time.perf_counter() - start
  num_classes = len(train.class_names)
  noisy, flipped = common.noisy_labels(config, train.labels, num_classes)
  targets = common.one_hot(noisy, num_classes)
  x, n = train.features, len(noisy)
  ones = np.ones(n, np.float32)
  # Detection reads the features averaged over shifted views when config.detection_views
  # (the refit, the baselines and the test errors stay on x).
  start = time.perf_counter()
  xd = common.detection_features(config, train, wd)
  timings["detection_views_s"] = time.perf_counter() - start

  def derivative_stage():
    start = time.perf_counter()
    reg = common.choose_reg(config, targets, x)
    t_reg = time.perf_counter() - start
    start = time.perf_counter()
    # The library's default rule on the detection features (rows sharded over every device
    # of every process; one device: the in-memory host path). reg on xd is re-chosen unless
    # config.reg is given; the automatic count reads its exact LOO probabilities.
    issues = label_issues.find_label_issues(
        noisy, features=xd, num_classes=num_classes, loss=config.loss,
        temperature=config.temperature, reg=config.reg if config.reg > 0 else None,
        detection_reg_multiplier=common.detection_multiplier(config), threshold=config.threshold,
        eps=config.eps, distributed=True)
    return {"reg": reg, "reg_detection": issues.reg, "reg_seconds": t_reg,
            "detection_reg": issues.detection_reg,
            "derivative": issues.derivative, "loo_loss": issues.loo_loss,
            "seconds": time.perf_counter() - start,
            "num_issues_estimate": issues.num_issues, "flagged": issues.flagged}

  st = wd.stage_arrays("label_issues", derivative_stage)
  # reg: the fit's (given, or the exact-LOO optimum on the plain features); the derivative is
  # taken at the detection features' reg times the rule's multiplier (config's, or 0.0: the
  # library's auto_reg_multiplier; see diva_jax.curation.label_issues). Reweighting runs on
  # the plain features at reg times the same multiplier.
  reg, deriv = float(st["reg"]), st["derivative"]
  multiplier = float(st["detection_reg"]) / float(st["reg_detection"])
  reg_detect = reg * multiplier
  num_issues = int(st["num_issues_estimate"])
  flagged = np.asarray(st["flagged"], bool)
  # AUROC of the derivative's ranking; F1 / precision / recall of what is flagged.
  det_sign = curation.detection_metrics(deriv, flipped, config.eps) if flipped.any() else None
  det = (curation.detection_metrics(flagged - 0.5, flipped, 0.0)._replace(auroc=det_sign.auroc)
         if flipped.any() else None)

  baselines, notes = {}, {}
  if flipped.any() and config.baselines:
    stage = wd.stage_json("baselines", lambda: dict(zip(("results", "notes"), _baselines(
        config, x, targets, noisy, flipped, reg, num_classes))), collective=False)
    baselines, notes = stage["results"], dict(stage["notes"])
  elif config.baselines:
    notes["baselines"] = "skipped: no label is flipped (nothing to detect)"

  def refit_error(keep):
    """Test error after removing samples: reg re-chosen on the kept ones (unless config.reg
    is given), then refit; NaN (None in metrics.json) if fewer than 2 are kept."""
    return label_issues.refit_test_error(
        keep, noisy, features=x, test_features=test.features, test_labels=test.labels,
        reg=config.reg if config.reg > 0 else None, loss=config.loss,
        temperature=config.temperature)

  def curation_stage():
    err = lambda w: common.test_error(w, targets, x, reg, test.features, test.labels)
    if config.reweight_steps > 0:
      rw = curation.reweight(ones, targets, features=x, reg=reg_detect,
                             steps=int(config.reweight_steps), learning_rate=config.reweight_lr,
                             loss=config.loss, temperature=config.temperature)
      weights, losses = rw.weights, rw.losses
    else:
      weights, losses = ones, np.zeros(0, np.float32)
    return {"test_error_before": err(ones), "test_error_reweighted": err(weights),
            "test_error_after": refit_error(~flagged), "reweight_weights": weights,
            "reweight_losses": losses, "test_error_oracle_removal": refit_error(~flipped)}

  cur = wd.stage_arrays("curation", curation_stage, collective=False)
  if flagged.all():
    notes["test_error_after"] = ("every sample is flagged: no refit on an empty set "
                                 "(test_error_after is null)")

  def sensitivity_stage():
    rows = []
    scale = float(diva_jax.select_reg(targets, features=x).scale)
    for loss in config.sensitivity_losses:
      sel = diva_jax.select_reg(targets, features=x, loss=loss, temperature=config.temperature)
      for mult in config.sensitivity_reg_multipliers:
        r = float(sel.reg) * mult
        v, d = diva_jax.loo_loss_and_derivative(ones, targets, features=x, reg=r, loss=loss,
                                                temperature=config.temperature)
        d = np.asarray(d)
        keep = d <= config.eps
        m = curation.detection_metrics(d, flipped, config.eps) if flipped.any() else None
        rows.append({"loss": loss, "reg": r, "reg_over_scale": r / scale,
                     "reg_multiplier_of_loo_optimum": mult, "loo_loss": float(v),
                     "detection_f1": m.f1 if m else None,
                     "detection_auroc": m.auroc if m else None,
                     "test_error_after": refit_error(keep)})
    return rows

  sensitivity = (wd.stage_json("sensitivity", sensitivity_stage, collective=False)
                 if config.sensitivity_reg_multipliers else [])

  metrics = {
      "dataset": config.dataset, "backbone": config.backbone, "n_train": n,
      "n_test": len(test.labels), "feature_dim": int(x.shape[1]),
      "noise_type": config.noise_type, "noise_rate": config.noise_rate,
      "num_noisy": int(flipped.sum()), "loss": config.loss, "reg": reg,
      "reg_chosen_by": "given" if config.reg > 0 else "exact LOO minimum",
      "detection_reg": float(st["detection_reg"]), "detection_reg_multiplier": multiplier,
      "detection_views": config.detection_views,
      "detection_f1_top_k": _metrics(None, flipped, deriv, 0, top_k=True)["detection_f1"]
                            if flipped.any() else None,
      "eps": config.eps, "threshold": config.threshold,
      "num_issues_estimate": num_issues, "num_flagged": int(flagged.sum()),
      "detection_f1_sign_rule": det_sign.f1 if det_sign else None,
      "num_flagged_sign_rule": int((deriv > config.eps).sum()),
      "detection_f1": det.f1 if det else None,
      "detection_precision": det.precision if det else None,
      "detection_recall": det.recall if det else None,
      "detection_auroc": det.auroc if det else None,
      "test_error_before": float(cur["test_error_before"]),
      "test_error_after": _none_if_nan(cur["test_error_after"]),
      "test_error_reweighted": float(cur["test_error_reweighted"]),
      "test_error_oracle_removal": _none_if_nan(cur["test_error_oracle_removal"]),
      "reweight_steps": config.reweight_steps,
      "reweight_loo_losses": np.asarray(cur["reweight_losses"]).tolist(),
      "loo_loss": float(st["loo_loss"]),
      "seconds": {"derivative": float(st["seconds"]), "reg_selection": float(st["reg_seconds"]),
                  "features": timings["features_s"],
                  "detection_views": timings["detection_views_s"]},
      "baselines": baselines,
      "sensitivity": sensitivity,
      "notes": notes,
  }
  wd.write_json("metrics.json", metrics)
  wd.write_csv("per_sample.csv", {
      "index": np.arange(n), "source": np.full(n, config.dataset), "label": noisy,
      "true_label": train.labels, "noisy": flipped, "derivative": deriv,
      "final_weight": np.asarray(cur["reweight_weights"]), "selected": ~flagged})
  if config.plots:
    cut = float(deriv[flagged].min()) if flagged.any() else float(config.eps)
    wd.savefig("derivative_histogram.png", plots.derivative_histogram(
        deriv, flipped, f"{config.dataset}: {int(flipped.sum())} of {n} labels flipped", cut=cut,
        cut_label=(f"automatic threshold, {int(flagged.sum())} flagged"
                   if config.threshold == "auto" else f"derivative > {config.eps:g}")))
    order = np.argsort(-deriv)
    idx = np.concatenate([order[:16], order[::-1][:8]])
    names = train.class_names
    caps = [f"{'harm' if j < 16 else 'help'} {names[noisy[i]]}"
            + (f" (true {names[train.labels[i]]})" if flipped[i] else "") for j, i in enumerate(idx)]
    wd.savefig("harmful_helpful.png", plots.image_grid(
        train.images[idx], caps, "16 most harmful (top two rows) and 8 most helpful samples"))
  if common.is_main_process():
    print(summary(metrics))
  return metrics


def summary(m: dict) -> str:
  pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"
  f3 = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = [
      f"== outlier rejection: {m['dataset']} ({m['backbone']}), n={m['n_train']}, "
      f"d={m['feature_dim']}, {m['num_noisy']} noisy labels ({m['noise_type']} "
      f"{m['noise_rate']:.0%}), loss={m['loss']}, reg={m['reg']:.4g} ({m['reg_chosen_by']}), "
      f"derivative at reg={m['detection_reg']:.4g}",
      f"DIVA derivative: F1 {f3(m['detection_f1'])} (threshold {m['threshold']}: "
      f"{m['num_flagged']} flagged, {m['num_issues_estimate']} issues estimated; sign rule "
      f"{m['num_flagged_sign_rule']} flagged, F1 {f3(m['detection_f1_sign_rule'])}; top-k F1 "
      f"{f3(m['detection_f1_top_k'])})  AUROC {f3(m['detection_auroc'])}  "
      f"in {m['seconds']['derivative']:.2f}s",
  ]
  if m["baselines"]:
    lines.append("baselines (F1 of the top k = number of noisy labels for rankings):")
  for name, b in m["baselines"].items():
    lines.append(f"  {name:<22s} F1 {f3(b['detection_f1'])}  AUROC {f3(b['detection_auroc'])}  "
                 f"in {b['seconds']:.2f}s")
  lines.append(f"test error: before {pct(m['test_error_before'])} | reweighted "
               f"({m['reweight_steps']} steps) {pct(m['test_error_reweighted'])} | flagged "
               f"removed {pct(m['test_error_after'])} | oracle removal "
               f"{pct(m['test_error_oracle_removal'])}")
  for name, note in m.get("notes", {}).items():
    lines.append(f"note: {name}: {note}")
  return "\n".join(lines)
