"""Detecting detrimental samples from the dataset derivative, and scoring a detection.

`detect_detrimental` flags samples whose derivative at weight 1 is above eps (they hurt), or,
with `num_flagged`, the that-many most harmful of them; `estimate_num_issues` estimates that
number from the data alone (no noise mask): the calibrated confident joint of out-of-sample
class probabilities (Northcutt et al., "Confident learning", JAIR 2021), here the exact LOO
probabilities. `detection_metrics` gives F1 at one threshold and AUROC over all thresholds
against a known noise mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diva_jax._curation_checks import check_array as _check_array
from diva_jax._curation_checks import check_int as _check_int
from diva_jax._curation_checks import check_mask as _check_mask
from diva_jax._curation_checks import check_real as _check_real

__all__ = ["DetectionMetrics", "detect_detrimental", "detection_metrics", "auroc",
           "estimate_num_issues"]


def detect_detrimental(derivative, eps: float = 0.0, *, num_flagged=None) -> np.ndarray:
  """Samples that hurt: derivative > eps (at weight 1).  [n] bool.

  With `num_flagged` (e.g. from `estimate_num_issues`), only the `num_flagged` largest
  derivatives among those > eps are flagged (ties broken by position).
  """
  d = _check_array("derivative", derivative, "[n]", 1)
  flagged = d > _check_real("eps", eps)
  if num_flagged is None:
    return flagged
  k = _check_int("num_flagged", num_flagged, 0)
  order = np.argsort(-d, kind="stable")[:k]
  top = np.zeros(d.shape, bool)
  top[order] = True
  return flagged & top


def estimate_num_issues(probs, labels) -> int:
  """The number of label issues, estimated without a noise mask: the off-diagonal mass of the
  calibrated confident joint (Northcutt et al., 2021) of out-of-sample probabilities.

  Per class j the threshold t_j is the mean of p_j over the samples labelled j. A sample
  counts toward (given label, j*) with j* the most probable class among those with
  p_j >= t_j (samples above no threshold are not counted). Each row of that joint is scaled
  to the number of samples with that given label; the estimate is the rounded sum of its
  off-diagonal entries.

  Args:
    probs: [n, c] out-of-sample class probabilities (e.g. softmax of exact LOO predictions).
    labels: [n] given labels, integers in [0, c).

  Returns:
    The estimated number of mislabelled samples, an int in [0, n].
  """
  p = _check_array("probs", probs, "[n, c]", 2).astype(np.float64)
  n, c = p.shape
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (
      n and (y.min() < 0 or y.max() >= c)):
    raise ValueError(f"labels must be [n] = ({n},) integers in [0, {c}), got shape {y.shape}, "
                     f"dtype {y.dtype}.")
  counts = np.bincount(y, minlength=c)
  present = counts > 0
  thresholds = np.array([p[y == j, j].mean() if present[j] else np.inf for j in range(c)])
  above = p >= thresholds[None, :]
  confident = above.any(axis=1)
  assigned = np.where(above, p, -np.inf).argmax(axis=1)
  joint = np.zeros((c, c))
  np.add.at(joint, (y[confident], assigned[confident]), 1.0)
  rows = joint.sum(axis=1, keepdims=True)
  calibrated = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
  return int(min(n, round(float(calibrated.sum() - np.trace(calibrated)))))


def auroc(scores, labels) -> float:
  """Area under the ROC curve of `scores` for the positives `labels` (ties count half).

  Equal to the Mann-Whitney U statistic / (n_pos n_neg); no scikit-learn needed.
  """
  scores = _check_array("scores", scores, "[n]", 1).astype(np.float64)
  labels = _check_mask("labels", labels, scores.shape[0])
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"AUROC needs positives and negatives: labels must hold both True and "
                     f"False, got {n_pos} positives and {n_neg} negatives.")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts - 1) / 2.0 + 1.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class DetectionMetrics(NamedTuple):
  f1: float
  precision: float
  recall: float
  auroc: float
  num_flagged: int


def detection_metrics(scores, noisy_mask, eps: float = 0.0) -> DetectionMetrics:
  """F1 / precision / recall of `scores > eps`, and AUROC of `scores`, vs the noise mask."""
  scores = _check_array("scores", scores, "[n]", 1)
  if np.shape(noisy_mask) != scores.shape:
    raise ValueError(f"scores shape {scores.shape} and noisy_mask shape "
                     f"{np.shape(noisy_mask)} differ.")
  noisy = _check_mask("noisy_mask", noisy_mask, scores.shape[0])
  flagged = scores > _check_real("eps", eps)
  roc = auroc(scores, noisy)
  tp = int(np.sum(flagged & noisy))
  precision = tp / max(int(flagged.sum()), 1)
  recall = tp / max(int(noisy.sum()), 1)
  f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
  return DetectionMetrics(f1, precision, recall, roc, int(flagged.sum()))
