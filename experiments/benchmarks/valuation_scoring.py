"""The valuation protocol's scoring: detection F1 and AUROC of a valuation, and the point
removal / addition curves of two downstream models (a ridge head, logistic regression)."""

from __future__ import annotations

import numpy as np

from diva_jax.app import common
from diva_jax.curation import valuation
import diva_jax


class RidgeDownstream:
  """Test accuracy of the ridge head trained on a subset (fixed reg; float64 normal
  equations, the Gram of the full set downdated when most samples are kept)."""

  def __init__(self, x, labels, num_classes, reg, x_eval, y_eval):
    self.x = np.asarray(x, np.float64)
    self.t = np.eye(num_classes)[labels]
    self.gram, self.xty = self.x.T @ self.x, self.x.T @ self.t
    self.reg, self.x_eval, self.y_eval = float(reg), np.asarray(x_eval, np.float64), y_eval

  def __call__(self, keep) -> float:
    keep = np.asarray(keep, bool)
    if keep.sum() < 2:
      return float("nan")
    if keep.sum() >= len(keep) / 2:
      drop = ~keep
      g = self.gram - self.x[drop].T @ self.x[drop]
      b = self.xty - self.x[drop].T @ self.t[drop]
    else:
      g, b = self.x[keep].T @ self.x[keep], self.x[keep].T @ self.t[keep]
    w = np.linalg.solve(g + self.reg * np.eye(len(g)), b)
    return float(np.mean(np.argmax(self.x_eval @ w, 1) == self.y_eval))


class LogisticDownstream:
  """Test accuracy of scikit-learn's logistic regression (lbfgs, C = 1) on a subset."""

  def __init__(self, x, labels, x_eval, y_eval):
    self.x, self.y, self.x_eval, self.y_eval = x, labels, x_eval, y_eval

  def __call__(self, keep) -> float:
    from sklearn.linear_model import LogisticRegression
    keep = np.asarray(keep, bool)
    if len(np.unique(self.y[keep])) < 2:
      return float("nan")
    with common.single_blas_thread():
      model = LogisticRegression(max_iter=300).fit(self.x[keep], self.y[keep])
    return float(np.mean(model.predict(self.x_eval) == self.y_eval))


def score(values, flipped, downstreams: dict, config, seed) -> dict:
  """The protocol's numbers for one valuation."""
  out = {"f1": valuation.noisy_detection_f1(values, flipped),
         "auroc": diva_jax.auroc(-np.asarray(values), flipped)}
  for name, evaluate in downstreams.items():
    for curve in valuation.CURVES:
      fr = (config.removal_fractions if curve.startswith("remove")
            else config.addition_fractions)
      acc = valuation.point_curve(values, fr, evaluate, curve=curve, seed=seed)
      out[f"{name}_{curve}"] = acc.tolist()
      out[f"{name}_{curve}_auc"] = valuation.curve_auc(fr, acc)
  return out
