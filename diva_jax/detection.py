"""Detecting detrimental samples from the dataset derivative, and scoring a detection.

`detect_detrimental` flags samples whose derivative at weight 1 is above eps (they hurt);
`detection_metrics` gives F1 at one eps and AUROC over all eps against a known noise mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diva_jax._curation_checks import check_array as _check_array
from diva_jax._curation_checks import check_mask as _check_mask
from diva_jax._curation_checks import check_real as _check_real

__all__ = ["DetectionMetrics", "detect_detrimental", "detection_metrics", "auroc"]


def detect_detrimental(derivative, eps: float = 0.0) -> np.ndarray:
  """Samples that hurt: derivative > eps (at weight 1).  [n] bool."""
  d = _check_array("derivative", derivative, "[n]", 1)
  return d > _check_real("eps", eps)


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
