"""Detecting detrimental samples from the dataset derivative, and scoring a detection.

`detect_detrimental` flags samples whose derivative at weight 1 is above eps (they hurt), or,
with `num_flagged`, the that-many most harmful of them; `estimate_num_issues` estimates that
number from the data alone (no noise mask): the calibrated confident joint of out-of-sample
class probabilities (Northcutt et al., "Confident learning", JAIR 2021), here the exact LOO
probabilities. `detection_metrics` gives F1 at one threshold and AUROC over all thresholds
against a known noise mask. `choose_detection_reg` chooses the ridge reg the derivative is
taken at (a multiple of the fit's reg) without a noise mask or test labels: the multiple whose
removal of the flagged samples gives the lowest held-out error against the given (noisy)
labels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diva_jax.curation import checks as cc
from diva_jax.loo import api as _loo
from diva_jax.loo import reg as reg_selection
from diva_jax.loo import heldout
from diva_jax.curation.checks import check_array as _check_array
from diva_jax.curation.checks import check_int as _check_int
from diva_jax.curation.checks import check_mask as _check_mask
from diva_jax.curation.checks import check_real as _check_real

__all__ = ["DetectionMetrics", "DetectionRegChoice", "detect_detrimental", "detection_metrics",
           "SignalCheck", "signal_check", "signal_warnings",
           "auroc", "estimate_num_issues", "loo_probabilities", "confident_joint",
           "choose_detection_reg"]


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


class SignalCheck(NamedTuple):
  """`signal_check`'s verdict: whether the features carry signal about the labels at all, and
  the classes they do not separate or whose every sample is flagged."""
  no_signal: bool
  accuracy: float          # the head's exact-LOO accuracy (suggested == given)
  majority: float          # the accuracy of always answering the largest class
  flagged_whole: tuple     # class indices whose every sample is flagged
  unseparated: tuple       # class indices the features do not separate
  recall: np.ndarray       # [c] per-class LOO recall (NaN for an empty class)
  share: np.ndarray        # [c] share of all samples predicted as each class


def signal_check(labels, suggested, flagged, num_classes: int) -> SignalCheck:
  """What a user must know before trusting the flags, from the rule's own outputs (no test
  labels, no noise mask):

  * no signal: the exact-LOO accuracy of the head (its suggested labels against the given
    ones) is not above what always answering the largest class gives, by two binomial
    standard errors; the flags then mark noise, not label issues;
  * a class flagged whole: every one of its samples is flagged;
  * a class the features do not separate (>= 10 samples): its samples are predicted as it no
    more often than all samples are (its LOO recall within two binomial standard errors of
    that share), e.g. one class's features replaced by another's.
  """
  y = np.asarray(labels)
  sug, fl = np.asarray(suggested), np.asarray(flagged, bool)
  n = y.size
  counts = np.bincount(y, minlength=num_classes)
  acc = float(np.mean(sug == y))
  prior = float(counts.max() / n)
  no_signal = bool(acc <= prior + 2.0 * np.sqrt(prior * (1.0 - prior) / n))
  share = np.bincount(sug, minlength=num_classes)[:num_classes] / n
  recall = np.full(num_classes, np.nan)
  whole, unsep = [], []
  for j in np.flatnonzero(counts):
    mine = y == j
    recall[j] = np.mean(sug[mine] == j)
    if fl[mine].all():
      whole.append(int(j))
    elif counts[j] >= 10 and recall[j] <= share[j] + 2.0 * np.sqrt(
        share[j] * (1 - share[j]) / counts[j]):
      unsep.append(int(j))
  return SignalCheck(no_signal, acc, prior, tuple(whole), tuple(unsep), recall, share)


def signal_warnings(check: SignalCheck, class_names=None) -> list[str]:
  """`check` in words, one message per finding (empty when the features look fine)."""
  c = len(check.recall)
  names = list(class_names) if class_names is not None else [str(j) for j in range(c)]
  out = []
  if check.no_signal:
    out.append(f"the features carry little signal about the labels: the head's exact "
               f"leave-one-out accuracy is {check.accuracy:.3f}, and always answering the "
               f"largest class gives {check.majority:.3f}; the flags then mark noise, not label "
               f"issues (check the features or the backbone)")
  for j in check.flagged_whole:
    out.append(f"every sample of class {names[j]!r} is flagged (its leave-one-out recall is "
               f"{check.recall[j]:.2f}): its features may not separate it, rather than all its "
               f"labels being wrong")
  if not check.no_signal:
    for j in check.unseparated:
      out.append(f"class {names[j]!r}: the features do not separate it (leave-one-out recall "
                 f"{check.recall[j]:.2f}, while {check.share[j]:.2f} of all samples are "
                 f"predicted as it); its flags mark noise, not label issues")
  return out


def loo_probabilities(loo_predictions, temperature: float) -> np.ndarray:
  """Row-wise softmax(loo_predictions / temperature) in float64."""
  z = np.asarray(loo_predictions, np.float64) / temperature
  z = z - z.max(1, keepdims=True)
  p = np.exp(z)
  return p / p.sum(1, keepdims=True)


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
  calibrated = confident_joint(probs, labels)
  n = np.shape(probs)[0]
  return int(min(n, round(float(calibrated.sum() - np.trace(calibrated)))))


def confident_joint(probs, labels) -> np.ndarray:
  """The [c, c] calibrated confident joint (rows: given label, columns: likely true label)
  that `estimate_num_issues` sums off the diagonal; its off-diagonal row sums are the
  per-class numbers of label issues (cleanlab's prune-by-class counts). Same args."""
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
  return np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]


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


class DetectionRegChoice(NamedTuple):
  """The result of `choose_detection_reg`: the chosen multiplier and the rule's table."""
  multiplier: float          # the chosen multiple of reg (the first minimiser of errors)
  multipliers: np.ndarray    # [g] the candidates, in the order given
  errors: np.ndarray         # [g] held-out criterion against the given labels (lower is better)
  num_flagged: np.ndarray    # [g] samples flagged (method "cv": summed over the folds)
  method: str
  flagged: np.ndarray        # [n] bool: the flags on all the data at the chosen multiplier


def _auto_num_flagged(targets, x, labels, reg, temperature):
  """The automatic threshold: `estimate_num_issues` on softmax(exact LOO at reg / T)."""
  loo = _loo.loo_predictions(np.ones(x.shape[0], x.dtype), targets, features=x, reg=reg)
  return estimate_num_issues(loo_probabilities(loo, temperature), labels)


def _flags(targets, x, labels, reg, mult, loss, temperature, num_flagged):
  """`detect_detrimental` at reg * mult with num_flagged (None: the automatic threshold)."""
  n = x.shape[0]
  ones = np.ones(n, x.dtype)
  if num_flagged is None:
    num_flagged = _auto_num_flagged(targets, x, labels, reg, temperature)
  d = np.asarray(_loo.dataset_derivative(ones, targets, features=x, reg=reg * mult,
                                             loss=loss, temperature=temperature))
  return detect_detrimental(d, num_flagged=min(int(num_flagged), n))


def _refit_predictions(targets, x, keep, loss, temperature, refit_reg, test_x):
  """The refit on the kept samples (reg re-chosen by exact LOO on them unless refit_reg):
  its weighted exact LOO predictions of every sample of x (test_x None; a removed sample has
  weight 0, so its row is the refit's ordinary prediction), or its predictions on test_x.
  None if fewer than 2 samples are kept."""
  if keep.sum() < 2:
    return None
  r = (float(reg_selection.select_reg(targets[keep], features=x[keep], loss=loss,
                                 temperature=temperature).reg)
       if refit_reg is None else refit_reg)
  w = keep.astype(x.dtype)
  if test_x is None:
    return np.asarray(_loo.loo_predictions(w, targets, features=x, reg=r))
  return np.asarray(heldout.ridge_predict(w, targets, features=x, reg=r, test_features=test_x))


def choose_detection_reg(targets, labels, *, features, reg, multipliers=(1, 3, 10, 30, 100, 300),
                         method: str = "loo", criterion: str = "mse", loss: str = "mse",
                         temperature: float = 1.0,
                         num_flagged=None, refit_reg=None, folds: int = 5,
                         seed: int = 0) -> DetectionRegChoice:
  """Chooses the multiple of reg the dataset derivative is taken at for removing detrimental
  samples, from the training data and its (noisy) labels alone: no noise mask, no test split.

  For each candidate multiple m: flag samples with `detect_detrimental(d, num_flagged=k)`, d
  the derivative (at weight 1) at reg * m and k = `num_flagged` or, if None, the automatic
  threshold `estimate_num_issues(softmax(LOO predictions at reg / temperature), labels)`;
  remove them; refit the ridge head (reg re-chosen by `select_reg` on the kept samples, or
  `refit_reg`); and estimate on held-out samples how well it predicts the given labels: the
  `criterion` "error" (classification error) or "mse" (mean squared error of the predictions
  against the one-hot `targets`, summed over classes: smoother, as it also sees samples the
  refit gets right or wrong by a small margin). The multiple with the lowest value is chosen
  (the first in the given order on ties). Under class-independent (uniform) label noise the
  expected classification error against noisy labels is an increasing affine function of the
  error against clean labels (the mse nearly so, when the predictions' rows sum to about 1),
  so minimising it minimises the clean error; under class-dependent noise it is only a proxy.

  Held-out error by `method`:
    "loo": the exact weighted LOO predictions of the refit (weights 1 kept, 0 flagged) for
      every training sample: a kept sample is predicted by the refit without it, a flagged
      one by the refit (which does not contain it). One detection per candidate; the flags
      themselves are computed with every label (a mild optimism shared by all candidates).
    "cv": `folds`-fold cross-validation: the whole procedure (automatic k, derivative, flags,
      refit) runs on the other folds at the given reg; error on the held-out fold.

  Args:
    targets: [n, c] targets (one-hot rows of `labels`).
    features: [n, d] features (primal form).
    labels: [n] given labels, integers in [0, c).
    reg: the fit's ridge reg > 0 (e.g. `select_reg(...).reg`); the derivative is taken at
      reg * m.
    multipliers: candidate multiples m > 0 (at least one).
    method: "loo" or "cv".
    criterion: "mse" or "error" (see above).
    loss, temperature: as in `dataset_derivative`; the temperature also turns LOO
      predictions into the probabilities of the automatic threshold.
    num_flagged: None (the automatic threshold) or an int >= 0 (the most harmful that many,
      among those with derivative > 0; method "cv" scales it to each fold's size).
    refit_reg: None (re-chosen on the kept samples) or a fixed reg > 0 for the refits.
    folds: number of folds for "cv" (2 <= folds <= n).
    seed: the folds' random assignment ("cv").

  Returns:
    A `DetectionRegChoice` (multiplier, multipliers, errors, num_flagged, method, flagged:
    the samples to remove, flagged on all the data at the chosen multiplier; `errors` holds
    the criterion per candidate). A candidate that keeps fewer than 2 samples scores +inf.

  Raises:
    ValueError: on bad arguments (named), before anything is computed.
  """
  y = _check_array("targets", targets, "[n, c]", 2, kinds="f")
  x = _check_array("features", features, "[n, d]", 2, kinds="f")
  n, c = y.shape
  if x.shape[0] != n:
    raise ValueError(f"features has {x.shape[0]} rows but targets has {n}: features shape "
                     f"{x.shape} vs targets shape {y.shape}.")
  if n < 2:
    raise ValueError(f"choose_detection_reg needs at least 2 samples, got n = {n}.")
  lab = np.asarray(labels)
  if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer) or (
      lab.min() < 0 or lab.max() >= c):
    raise ValueError(f"labels must be [n] = ({n},) integers in [0, {c}), got shape "
                     f"{lab.shape}, dtype {lab.dtype}.")
  reg = _check_real("reg", reg, positive=True)
  mults = np.asarray(multipliers, np.float64) if np.ndim(multipliers) == 1 else None
  if mults is None or mults.size == 0 or not np.all(np.isfinite(mults)) or np.any(mults <= 0):
    raise ValueError(f"multipliers must be a non-empty 1-d sequence of finite numbers > 0, "
                     f"got {multipliers!r}.")
  if method not in ("loo", "cv"):
    raise ValueError(f"method must be 'loo' or 'cv', got {method!r}.")
  if criterion not in ("mse", "error"):
    raise ValueError(f"criterion must be 'mse' or 'error', got {criterion!r}.")
  cc.check_loss(loss, temperature)
  temperature = _check_real("temperature", temperature, positive=True)
  if num_flagged is not None:
    num_flagged = _check_int("num_flagged", num_flagged, 0)
  if refit_reg is not None:
    refit_reg = _check_real("refit_reg", refit_reg, positive=True)
  folds = _check_int("folds", folds, 2)
  seed = _check_int("seed", seed, 0)
  if method == "cv" and folds > n:
    raise ValueError(f"folds must be <= n = {n} for method 'cv', got {folds}.")

  def score(pred, y_held, lab_held):  # summed over the held-out samples
    if criterion == "error":
      return float(np.sum(pred.argmax(1) != lab_held))
    return float(np.sum((np.asarray(pred, np.float64) - y_held) ** 2))

  errors, flagged_counts = np.zeros(len(mults)), np.zeros(len(mults), np.int64)
  all_flags = []
  if method == "loo":
    k = (_auto_num_flagged(y, x, lab, reg, temperature) if num_flagged is None
         else num_flagged)  # the same for every candidate
    for i, m in enumerate(mults):
      flagged = _flags(y, x, lab, reg, m, loss, temperature, k)
      pred = _refit_predictions(y, x, ~flagged, loss, temperature, refit_reg, None)
      all_flags.append(flagged)
      flagged_counts[i] = flagged.sum()
      errors[i] = np.inf if pred is None else score(pred, y, lab) / n
  else:
    fold = np.random.default_rng(seed).permutation(n) % folds
    for f in range(folds):
      tr, te = fold != f, fold == f
      k = (_auto_num_flagged(y[tr], x[tr], lab[tr], reg, temperature) if num_flagged is None
           else int(round(num_flagged * tr.sum() / n)))
      for i, m in enumerate(mults):
        flagged = _flags(y[tr], x[tr], lab[tr], reg, m, loss, temperature, k)
        pred = _refit_predictions(y[tr], x[tr], ~flagged, loss, temperature, refit_reg, x[te])
        flagged_counts[i] += flagged.sum()
        errors[i] += np.inf if pred is None else score(pred, y[te], lab[te]) / n
  best = int(np.argmin(errors))
  chosen = (all_flags[best] if method == "loo"
            else _flags(y, x, lab, reg, mults[best], loss, temperature, num_flagged))
  return DetectionRegChoice(float(mults[best]), mults, errors, flagged_counts, method, chosen)
