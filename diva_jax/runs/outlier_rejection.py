"""Outlier / mislabel rejection with the dataset derivative, and reweighting.

Steps (each a resumable stage of the workdir):
  1. features of the train and test split (backbone, cached);
  2. label noise on the train split (uniform or pairwise, seeded);
  3. reg (given, or the minimiser of the exact LOO error: computable without the mask);
  4. the dataset derivative at weight 1; flag derivative > eps;
  5. baselines on the same features: cleanlab fed our exact LOO class probabilities,
     cleanlab fed 5-fold cross-validated logistic-regression probabilities (its usual recipe),
     ranking by the per-sample LOO loss, random scores; each timed;
  6. test error of the ridge head before curation, after 1-3 reweighting steps and after
     removing the flagged samples;
  7. sensitivity of detection and test error to reg and the loss.
Outputs: config.json, metrics.json, per_sample.csv, derivative_histogram.png,
harmful_helpful.png, and a summary on stdout.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import diva_jax
from diva_jax import curation
from diva_jax.runs import common
from diva_jax.runs import plots

METRIC_KEYS = ("detection_f1", "detection_auroc", "test_error_before", "test_error_after")


def _softmax(x, temperature):
  z = np.asarray(x, np.float64) / temperature
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


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
  probs = _softmax(loo, config.temperature)

  start = time.perf_counter()
  issues = find_label_issues(noisy, probs, n_jobs=1)  # no fork(): JAX is multithreaded
  score = -get_label_quality_scores(noisy, probs)
  out["cleanlab_exact_loo"] = _metrics(issues.astype(float) - 0.5, flipped, score,
                                       t_loo + time.perf_counter() - start)

  if config.cv_logistic:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    start = time.perf_counter()
    cv_probs = cross_val_predict(LogisticRegression(max_iter=config.logistic_max_iter,
                                                    C=config.logistic_c),
                                 feats, noisy, cv=5, method="predict_proba")
    issues = find_label_issues(noisy, cv_probs, n_jobs=1)
    score = -get_label_quality_scores(noisy, cv_probs)
    out["cleanlab_cv_logistic"] = _metrics(issues.astype(float) - 0.5, flipped, score,
                                           time.perf_counter() - start)

  start = time.perf_counter()
  loo_loss = np.sum((loo - targets) ** 2, 1)
  out["loo_loss_ranking"] = _metrics(None, flipped, loo_loss, t_loo + time.perf_counter() - start,
                                     top_k=True)
  rng = np.random.default_rng(config.seed + 1)
  out["random"] = _metrics(None, flipped, rng.uniform(size=n), 0.0, top_k=True)
  return out


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


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs the experiment; returns the metrics (also written to <workdir>/metrics.json)."""
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

  def derivative_stage():
    start = time.perf_counter()
    reg = common.choose_reg(config, targets, x)
    t_reg = time.perf_counter() - start
    start = time.perf_counter()
    value, deriv = diva_jax.loo_loss_and_derivative(
        ones, targets, features=x, reg=reg * config.detection_reg_multiplier, loss=config.loss,
        temperature=config.temperature)
    deriv = np.asarray(jax.block_until_ready(deriv))
    return {"reg": reg, "reg_seconds": t_reg, "loo_loss": float(value), "derivative": deriv,
            "seconds": time.perf_counter() - start}

  st = wd.stage_arrays("derivative", derivative_stage)
  # reg: the fit's (given, or the exact-LOO optimum); the derivative is taken at
  # reg * detection_reg_multiplier (a smoother fit separates mislabels better; the
  # multiplier is chosen without the noise mask, see the README's sensitivity table).
  reg, deriv = float(st["reg"]), st["derivative"]
  reg_detect = reg * config.detection_reg_multiplier
  flagged = curation.detect_detrimental(deriv, config.eps)
  det = curation.detection_metrics(deriv, flipped, config.eps) if flipped.any() else None

  baselines = {}
  if flipped.any() and config.baselines:
    baselines = wd.stage_json("baselines", lambda: _baselines(
        config, x, targets, noisy, flipped, reg, num_classes))

  def refit_error(keep):
    """Test error after removing samples: reg re-chosen on the kept ones, then refit."""
    kept_reg = common.choose_reg(config, targets[keep], x[keep])
    return common.test_error(keep.astype(np.float32), targets, x, kept_reg, test.features,
                             test.labels)

  def curation_stage():
    err = lambda w: common.test_error(w, targets, x, reg, test.features, test.labels)
    rw = curation.reweight(ones, targets, features=x, reg=reg_detect,
                           steps=config.reweight_steps, learning_rate=config.reweight_lr,
                           loss=config.loss, temperature=config.temperature)
    return {"test_error_before": err(ones), "test_error_reweighted": err(rw.weights),
            "test_error_after": refit_error(~flagged), "reweight_weights": rw.weights,
            "reweight_losses": rw.losses, "test_error_oracle_removal": refit_error(~flipped)}

  cur = wd.stage_arrays("curation", curation_stage)

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

  sensitivity = (wd.stage_json("sensitivity", sensitivity_stage)
                 if config.sensitivity_reg_multipliers else [])

  metrics = {
      "dataset": config.dataset, "backbone": config.backbone, "n_train": n,
      "n_test": len(test.labels), "feature_dim": int(x.shape[1]),
      "noise_type": config.noise_type, "noise_rate": config.noise_rate,
      "num_noisy": int(flipped.sum()), "loss": config.loss, "reg": reg,
      "reg_chosen_by": "given" if (not isinstance(config.reg, str) and config.reg > 0)
                       else "exact LOO minimum",
      "detection_reg": reg_detect,
      "detection_f1_top_k": _metrics(None, flipped, deriv, 0, top_k=True)["detection_f1"]
                            if flipped.any() else None,
      "eps": config.eps, "num_flagged": int(flagged.sum()),
      "detection_f1": det.f1 if det else None,
      "detection_precision": det.precision if det else None,
      "detection_recall": det.recall if det else None,
      "detection_auroc": det.auroc if det else None,
      "test_error_before": float(cur["test_error_before"]),
      "test_error_after": float(cur["test_error_after"]),
      "test_error_reweighted": float(cur["test_error_reweighted"]),
      "test_error_oracle_removal": float(cur["test_error_oracle_removal"]),
      "reweight_steps": config.reweight_steps,
      "reweight_loo_losses": np.asarray(cur["reweight_losses"]).tolist(),
      "loo_loss": float(st["loo_loss"]),
      "seconds": {"derivative": float(st["seconds"]), "reg_selection": float(st["reg_seconds"]),
                  "features": timings["features_s"]},
      "baselines": baselines,
      "sensitivity": sensitivity,
  }
  wd.write_json("metrics.json", metrics)
  wd.write_csv("per_sample.csv", {
      "index": np.arange(n), "source": np.full(n, config.dataset), "label": noisy,
      "true_label": train.labels, "noisy": flipped, "derivative": deriv,
      "final_weight": np.asarray(cur["reweight_weights"]), "selected": ~flagged})
  if config.plots:
    wd.savefig("derivative_histogram.png", plots.derivative_histogram(
        deriv, flipped, f"{config.dataset}: {int(flipped.sum())} of {n} labels flipped"))
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
      f"DIVA derivative: F1 {f3(m['detection_f1'])} (eps={m['eps']:g}, {m['num_flagged']} "
      f"flagged; top-k F1 {f3(m['detection_f1_top_k'])})  AUROC {f3(m['detection_auroc'])}  "
      f"in {m['seconds']['derivative']:.2f}s",
      "baselines (F1 of the top k = number of noisy labels for rankings):",
  ]
  for name, b in m["baselines"].items():
    lines.append(f"  {name:<22s} F1 {f3(b['detection_f1'])}  AUROC {f3(b['detection_auroc'])}  "
                 f"in {b['seconds']:.2f}s")
  lines.append(f"test error: before {pct(m['test_error_before'])} | reweighted "
               f"({m['reweight_steps']} steps) {pct(m['test_error_reweighted'])} | flagged "
               f"removed {pct(m['test_error_after'])} | oracle removal "
               f"{pct(m['test_error_oracle_removal'])}")
  return "\n".join(lines)
