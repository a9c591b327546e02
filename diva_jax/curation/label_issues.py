"""`find_label_issues`: the library's default rule for mislabel detection, in one call.

The rule (needs no noise mask, no validation set and no test labels):

1. reg: the minimiser of the exact LOO loss over a grid (`select_reg`), unless given;
2. the dataset derivative at weight 1 of the LOO cross-entropy (temperature 0.3) with the
   weighted outer mean, at `detection_reg_multiplier` times that reg. By default the
   multiplier follows the fit's flexibility (`auto_reg_multiplier`): clip(100 df / n, 1, 10)
   with df the fit's effective degrees of freedom at reg. A fit that can memorise its
   labels (embeddings: df / n >= 0.1) needs the smoother fit of 10 x reg to separate the
   mislabels; a stiff one (a table with few columns: df / n ~ 0.01) is ranked best at reg;
3. the automatic threshold: the number of label issues estimated from the exact LOO class
   probabilities at reg (`estimate_num_issues`, the calibrated confident joint); the that-many
   samples with the largest positive derivative are flagged.

Every binary of the project (outlier rejection, curate, the studies) calls this function, so
the default lives here once. `refit_test_error` is the one helper for "refit the ridge head on
the kept samples, then the test error".
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import numpy as np

from diva_jax.curation import checks as cc
from diva_jax.curation import detect
from diva_jax.curation import streamed_rule
from diva_jax.loo import api as _loo
from diva_jax.loo import checks as _checks
from diva_jax.loo import reg as reg_selection
from diva_jax.loo import heldout
from diva_jax.parallel import multihost as dist

loo_probabilities = detect.loo_probabilities  # re-exported

__all__ = ["LabelIssues", "find_label_issues", "refit_test_error", "loo_probabilities",
           "THRESHOLDS", "auto_reg_multiplier"]

THRESHOLDS = ("auto", "sign")


class LabelIssues(NamedTuple):
  """The result of `find_label_issues` (NumPy arrays; n samples, c classes)."""
  flagged: np.ndarray            # [n] bool: the samples to remove (or relabel)
  ranking: np.ndarray            # [n] int: sample indices, most harmful first
  derivative: np.ndarray         # [n] dL_loo/dw_i at weight 1 (> 0: the sample hurts)
  loo_probs: np.ndarray          # [n, c] softmax(exact LOO predictions at reg / temperature)
                                 # (None from the streamed rule with return_probs=False)
  suggested_labels: np.ndarray   # [n] int: argmax of the LOO predictions
  quality_scores: np.ndarray     # [n] LOO probability of the given label (low: suspicious)
  num_issues: int                # the estimated number of label issues (the auto threshold)
  num_positive: int              # samples with derivative > eps (what the sign rule flags)
  reg: float                     # the fit's reg (exact-LOO optimum unless given)
  detection_reg: float           # the reg the derivative is taken at
  loo_loss: float                # the mean LOO loss at detection_reg
  warnings: tuple = ()           # `detect.signal_check` in words: features without signal,
                                 # classes flagged whole or not separated (each also issued
                                 # as a RuntimeWarning)


def _with_warnings(issues: "LabelIssues", y: np.ndarray, c: int) -> "LabelIssues":
  """`issues` with `detect.signal_warnings` filled in, each also issued as a warning."""
  found = tuple(detect.signal_warnings(
      detect.signal_check(y, issues.suggested_labels, issues.flagged, c)))
  for w in found:
    warnings.warn(f"find_label_issues: {w}.", RuntimeWarning, stacklevel=4)
  return issues._replace(warnings=found)


def _check_labels(labels, num_classes) -> tuple[np.ndarray, int]:
  y = np.asarray(labels)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be a [n] integer array, got shape {y.shape}, dtype "
                     f"{y.dtype}.")
  if y.size < 3:
    raise ValueError(f"labels must hold at least 3 samples for leave-one-out, got {y.size}.")
  c = int(y.max()) + 1 if num_classes is None else cc.check_int("num_classes", num_classes, 2)
  if y.min() < 0 or y.max() >= c:
    raise ValueError(f"labels must be integers in [0, num_classes) = [0, {c}), got values in "
                     f"[{int(y.min())}, {int(y.max())}].")
  if c < 2:
    raise ValueError(f"labels must hold at least 2 classes, got {c}.")
  return y, c


def auto_reg_multiplier(dof: float, n: int) -> float:
  """The default detection-reg multiplier: clip(100 dof / n, 1, 10).

  dof / n is the fit's mean leverage at the exact-LOO reg (`select_reg`,
  `diva_jax.loo.reg.degrees_of_freedom`). Measured on 8 tables, 2 embedding sets and
  synthetic embeddings at 4 noise settings (docs/studies.md, "The detection reg"): embeddings
  (dof / n 0.09-0.35) rank
  mislabels best at 10 x reg, tables with few columns (dof / n 0.001-0.1) at 1-3 x reg; the
  rule needs no noise mask and takes each kind's best fixed value.
  """
  return float(min(10.0, max(1.0, 100.0 * float(dof) / max(int(n), 1))))


def _check_rule_args(loss, temperature, reg, detection_reg_multiplier, threshold, eps, outer):
  """The rule's scalar arguments, checked (in memory and streamed alike):
  (temperature, reg or None, multiplier or None, eps)."""
  cc.check_loss(loss, temperature)
  temperature = cc.check_real("temperature", temperature, positive=True)
  if reg is not None:
    reg = cc.check_real("reg", reg, positive=True)
  mult = (None if detection_reg_multiplier is None else
          cc.check_real("detection_reg_multiplier", detection_reg_multiplier, positive=True))
  if threshold not in THRESHOLDS:
    raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}.")
  _checks.check_outer(outer)
  return temperature, reg, mult, cc.check_real("eps", eps)


def find_label_issues(labels, *, features=None, kernel=None, num_classes: Optional[int] = None,
                      loss: str = "ce", temperature: float = 0.3, reg: Optional[float] = None,
                      detection_reg_multiplier: Optional[float] = None, threshold: str = "auto",
                      eps: float = 0.0, distributed: bool = False,
                      outer: str = "weighted", block_size: Optional[int] = None,
                      return_probs: bool = True, reg_rows: int = 32768) -> LabelIssues:
  """Finds the mislabelled (detrimental) samples of a labelled dataset by the default rule.

  Args:
    labels: [n] given labels, integers in [0, num_classes).
    features: [n, d] features (e.g. a frozen network's penultimate activations, standardised;
      for detection on augmented views, their average over the views), or
    kernel: [n, n] a PSD kernel instead (exactly one of the two).
    num_classes: c (default: max(labels) + 1).
    loss, temperature: the LOO loss the derivative differentiates ("ce" at T = 0.3 is the
      strongest detection setting found; "mse" is the plain ridge loss).
    reg: the fit's ridge reg > 0, or None: the exact-LOO optimum (`select_reg`).
    detection_reg_multiplier: the derivative is taken at reg times this (> 0), or None (the
      default): `auto_reg_multiplier` of the fit's degrees of freedom at reg, from 1 (tables
      with few columns) to 10 (embeddings).
    threshold: "auto" (flag the `num_issues` most harmful samples among those with
      derivative > eps) or "sign" (flag every sample with derivative > eps).
    eps: the derivative above which a sample counts as harmful.
    distributed: rows sharded over every device of every process for the derivative
      (`diva_jax.parallel.multihost`; features only). With one device it is the in-memory path.
      With streamed features each process reads only its share of the rows and every
      process returns the whole result (the one-process flags).
    outer: the LOO loss differentiated: "weighted" (default; the outer mean weighted by the
      sample weights, so the derivative holds each sample's own term (l_k - L) / n besides
      its effect on the others) or "mean" (the paper's derivative, no own term). The own
      term is what ranks mislabels on binary and low-dimensional data (docs/math.md).
    block_size: rows per block of the streamed rule (`diva_jax.curation.streamed_rule`: one
      eigendecomposition, three passes over the rows, the features never held whole). Used
      when given, and always when `features` is a `.npy` path, an `np.memmap` or a block
      source (`diva_jax.loo.streaming.ArraySource`, `FunctionSource`); default 8192 there.
    return_probs: streamed rule only: False leaves `loo_probs` None (no [n, c] array kept).
    reg_rows: streamed rule only: reg is the exact-LOO optimum on this many random rows
      (every row when n <= reg_rows: then the same reg as in memory), each row's LOO
      prediction from the whole fit.

  Returns:
    A `LabelIssues`.

  Raises:
    ValueError: on bad arguments (named), before anything is computed.
  """
  y, c = _check_labels(labels, num_classes)
  n = y.shape[0]
  if features is not None and kernel is None and (
      block_size is not None or streamed_rule.is_streamed_source(features)):
    return _streamed(y, c, features, loss=loss, temperature=temperature, reg=reg,
                     detection_reg_multiplier=detection_reg_multiplier, threshold=threshold,
                     eps=eps, distributed=distributed, outer=outer,
                     block_size=8192 if block_size is None else block_size,
                     return_probs=return_probs, reg_rows=reg_rows)
  _checks.check_one_of(features, kernel)
  data = cc.check_array("features" if kernel is None else "kernel",
                        features if kernel is None else kernel,
                        "[n, d]" if kernel is None else "[n, n]", 2, kinds="f")
  if data.shape[0] != n or (kernel is not None and data.shape != (n, n)):
    want = "[n, d]" if kernel is None else f"[n, n] = ({n}, {n})"
    raise ValueError(f"{'features' if kernel is None else 'kernel'} must have shape {want} "
                     f"with n = {n} (the length of labels), got shape {data.shape}.")
  temperature, reg, mult, eps = _check_rule_args(loss, temperature, reg,
                                                 detection_reg_multiplier, threshold, eps, outer)
  if distributed and kernel is not None:
    raise ValueError("distributed=True shards feature rows; pass features=, not kernel=.")

  dtype = data.dtype
  targets = np.eye(c, dtype=dtype)[y]
  ones = np.ones(n, dtype)
  src = {"features": data} if kernel is None else {"kernel": data}
  if reg is None:
    reg = float(reg_selection.select_reg(targets, loss=loss, temperature=temperature,
                                         **src).reg)
  if mult is None:
    mult = auto_reg_multiplier(reg_selection.degrees_of_freedom(reg=reg, **src), n)
  det_reg = reg * mult
  if distributed:
    value, deriv = dist.sharded_loo_loss_and_derivative(
        ones, targets, features=data, reg=det_reg, loss=loss, temperature=temperature, outer=outer)
  else:
    value, deriv = _loo.loo_loss_and_derivative(ones, targets, reg=det_reg, loss=loss,
                                                temperature=temperature, outer=outer, **src)
  deriv = np.asarray(deriv, np.float64)
  loo = np.asarray(_loo.loo_predictions(ones, targets, reg=reg, **src), np.float64)
  probs = detect.loo_probabilities(loo, temperature)
  num_issues = detect.estimate_num_issues(probs, y)
  flagged = detect.detect_detrimental(
      deriv, eps, num_flagged=num_issues if threshold == "auto" else None)
  return _with_warnings(LabelIssues(
      flagged=flagged, ranking=np.argsort(-deriv, kind="stable"), derivative=deriv,
      loo_probs=probs, suggested_labels=np.argmax(loo, 1), quality_scores=probs[np.arange(n), y],
      num_issues=int(num_issues), num_positive=int(np.sum(deriv > eps)), reg=float(reg),
      detection_reg=float(det_reg), loo_loss=float(value)), y, c)


def _streamed(y, c, features, *, loss, temperature, reg, detection_reg_multiplier, threshold,
              eps, distributed, outer, block_size, return_probs, reg_rows) -> LabelIssues:
  """`find_label_issues` on a streamed source: every argument checked before a pass."""
  source = streamed_rule.as_block_source(features)
  n = y.shape[0]
  if int(source.num_rows) != n:
    raise ValueError(f"features must have n = {n} rows (the length of labels), got "
                     f"{int(source.num_rows)} rows of {int(source.num_features)} columns.")
  temperature, reg, mult, eps = _check_rule_args(loss, temperature, reg,
                                                 detection_reg_multiplier, threshold, eps, outer)
  block_size = cc.check_int("block_size", block_size, 1)
  reg_rows = cc.check_int("reg_rows", reg_rows, 2)
  r = streamed_rule.streamed_label_issues(
      y, c, source, loss=loss, temperature=temperature, reg=reg, mult=mult,
      threshold=threshold, eps=eps, outer=outer, block_size=block_size, reg_rows=reg_rows,
      return_probs=bool(return_probs), dtype=None, seed=0, distributed=bool(distributed))
  if r["at_edge"]:
    warnings.warn(f"find_label_issues: the LOO loss is smallest at an edge of select_reg's "
                  f"grid (reg = {r['reg']:.3g}); the best reg may lie outside it.",
                  RuntimeWarning, stacklevel=3)
  deriv = r["derivative"]
  return _with_warnings(LabelIssues(
      flagged=r["flagged"], ranking=np.argsort(-deriv, kind="stable"), derivative=deriv,
      loo_probs=r["probs"], suggested_labels=r["suggested"], quality_scores=r["quality"],
      num_issues=int(r["num_issues"]), num_positive=int(np.sum(deriv > eps)),
      reg=float(r["reg"]), detection_reg=float(r["detection_reg"]),
      loo_loss=float(r["loo_loss"])), y, c)


def refit_test_error(keep, labels, *, features, test_features, test_labels,
                     reg: Optional[float] = None, loss: str = "ce",
                     temperature: float = 0.3, num_classes: Optional[int] = None) -> float:
  """Classification error on a test set of the ridge head refit on the kept samples only.

  Args:
    keep: [n] bool (or 0/1 weights) of the samples to keep.
    labels, features: the training set ([n] int labels, [n, d] features).
    test_features, test_labels: the test set.
    reg: the refit's reg, or None: re-chosen by exact LOO on the kept samples.
    loss, temperature: the LOO loss of that choice.
    num_classes: the head's outputs (default: the largest label seen + 1).

  Returns:
    The test error in [0, 1]; NaN when fewer than 2 samples are kept.
  """
  x = cc.check_array("features", features, "[n, d]", 2, kinds="f")
  keep = cc.check_mask("keep", keep, x.shape[0])
  y = np.asarray(labels)
  tx = cc.check_array("test_features", test_features, "[m, d]", 2, kinds="f")
  if tx.shape[1] != x.shape[1]:
    raise ValueError(f"test_features must have d = {x.shape[1]} columns like features, got "
                     f"shape {tx.shape}.")
  c = (int(max(y.max(), np.max(test_labels))) + 1 if num_classes is None
       else cc.check_int("num_classes", num_classes, 2))
  if keep.sum() < 2:
    return float("nan")
  targets = np.eye(c, dtype=x.dtype)[y]
  if reg is None:
    reg = float(reg_selection.select_reg(targets[keep], features=x[keep], loss=loss,
                                         temperature=temperature).reg)
  pred = heldout.ridge_predict(keep.astype(x.dtype), targets, features=x, reg=reg,
                                  test_features=tx)
  return float(np.mean(np.argmax(np.asarray(pred), 1) != np.asarray(test_labels)))
