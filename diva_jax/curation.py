"""Dataset curation with the dataset derivative (the DIVA paper's section 4).

Algorithms over the LOO core, as plain functions a researcher composes:

* `detect_detrimental` / `detection_metrics`: flag samples whose derivative at weight 1 is
  above eps (they hurt); F1 at one eps and AUROC over all eps against a known noise mask.
* `reweight`: 1-3 projected gradient steps on the weights with optax (weights stay >= 0).
  Many steps over-fit the LOO estimate, which is unbiased only at the first step.
* `extend`: add pool samples (weight 0 -> 1) with the most negative derivative, k at a time,
  the LOO loss evaluated on the core only, until none helps or the budget is reached.
* `group_derivative` / `reweight_groups`: one weight per group (modality, source, class,
  augmentation); a group's derivative is the sum of its members'. The basis of multi-modal
  aggregation, class rebalancing and `tune_augmentations`.

All take the same `features=` / `kernel=` / `reg` / `loss` arguments as `diva_jax.loo_loss`.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diva_jax import loo as _loo

__all__ = [
    "DetectionMetrics",
    "detect_detrimental",
    "detection_metrics",
    "auroc",
    "ReweightResult",
    "reweight",
    "ExtendResult",
    "extend",
    "group_derivative",
    "reweight_groups",
    "tune_augmentations",
    "normalized_sgd",
]


# ----------------------------------------------------------------------------------------
# Boundary validation: every public function checks its own arguments, by name, before
# computing anything (the core's messages speak of "weights", which most of these lack).
# ----------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
  """`value` must be an integral number (int, np.int64, ...; not bool) >= minimum."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} "
                     f"({type(value).__name__}).")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def _check_real(name: str, value, *, positive: bool = False) -> float:
  """`value` must be a finite real scalar (not bool or str); > 0 when `positive`."""
  if isinstance(value, jax.core.Tracer):  # under a user's trace: values unknown
    return value
  if not isinstance(value, (str, bytes)) and np.ndim(value) != 0:
    raise ValueError(f"{name} must be a real scalar, got an array of shape "
                     f"{np.shape(value)}.")
  kind = np.asarray(value).dtype.kind if not isinstance(value, (str, bytes)) else "U"
  if isinstance(value, (bool, np.bool_)) or kind not in "iuf":
    raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
  v = float(np.asarray(value))
  if not np.isfinite(v) or (positive and v <= 0):
    raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {v}.")
  return v


def _check_reg(reg) -> None:
  """Concrete reg: a finite real scalar > 0 (not bool or str). Traced reg: left to the core."""
  _check_real("reg", reg, positive=True)


def _check_loss(loss, temperature) -> None:
  if not isinstance(loss, str) or loss not in _loo.LOSSES:
    raise ValueError(f"loss must be one of {_loo.LOSSES}, got {loss!r}.")
  _check_real("temperature", temperature, positive=True)


def _check_array(name: str, x, shape_doc: str, ndim: int, *, finite: bool = True,
                 kinds: str = "iuf") -> np.ndarray:
  """A numeric array of `ndim` dims (dtype kind in `kinds`), finite when `finite`."""
  arr = np.asarray(x)
  if arr.ndim != ndim:
    raise ValueError(f"{name} must have shape {shape_doc}, got shape {arr.shape}.")
  if arr.dtype.kind not in kinds:
    what = "a floating-point" if kinds == "f" else "a numeric"
    raise ValueError(f"{name} must be {what} array, got dtype {arr.dtype}.")
  if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
    bad = np.flatnonzero(~np.isfinite(arr.ravel()))
    raise ValueError(f"{name} must be finite, but {bad.size} of its {arr.size} entries are "
                     f"NaN or Inf (first at flat index {int(bad[0])}).")
  return arr


def _check_mask(name: str, mask, n: int) -> np.ndarray:
  """[n] bool, or numbers that are all 0 or 1  ->  [n] bool."""
  arr = np.asarray(mask)
  if arr.shape != (n,):
    raise ValueError(f"{name} must have shape [n] = ({n},), got shape {arr.shape}.")
  if arr.dtype.kind == "b":
    return arr
  if arr.dtype.kind not in "iuf":
    raise ValueError(f"{name} must be a bool array (or 0/1 values), got dtype {arr.dtype}.")
  bad = np.flatnonzero((arr != 0) & (arr != 1))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"{name} must be a bool array (or 0/1 values), got dtype {arr.dtype} "
                     f"with {name}[{i}] = {arr[i]}.")
  return arr.astype(bool)


def _check_data(targets, features, kernel) -> int:
  """targets [n, c] with exactly one of features [n, d] / kernel [n, n]; returns n.

  Only shapes and kinds (the core checks values): its messages compare with `weights`,
  an argument `extend` / `reweight_groups` / `tune_augmentations` do not have.
  """
  if (features is None) == (kernel is None):
    got = "both" if features is not None else "neither"
    raise ValueError("Pass exactly one of features= ([n, d], primal form) or kernel= "
                     f"([n, n], dual form); got {got}.")
  ts = np.shape(targets)
  if len(ts) != 2:
    hint = " (for a single output use targets[:, None])" if len(ts) == 1 else ""
    raise ValueError(f"targets must have shape [n, c], got shape {ts}{hint}.")
  n = ts[0]
  if features is not None:
    fs = np.shape(features)
    if len(fs) != 2 or fs[0] != n:
      raise ValueError(f"features must have shape [n, d] with n = {n} (the rows of targets), "
                       f"got shape {fs}.")
  else:
    ks = np.shape(kernel)
    if ks != (n, n):
      raise ValueError(f"kernel must have shape [n, n] = ({n}, {n}) (n = the rows of "
                       f"targets), got shape {ks}.")
  return n


def _float_dtype(features, kernel, targets) -> np.dtype:
  """The dtype the core computes in: that of features / kernel (else targets) when floating."""
  for a in (features if features is not None else kernel, targets):
    if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.floating):
      return np.dtype(jnp.result_type(a))
  return np.dtype(jnp.result_type(float))


def _check_weights(name: str, weights, n: int, dtype) -> np.ndarray:
  """[n] finite weights >= 0 (bool / int / float), cast to the float `dtype`."""
  w = _check_array(name, weights, f"[n] = ({n},)", 1, kinds="biuf")
  if w.shape != (n,):
    raise ValueError(f"{name} must have shape [n] = ({n},) (n = the rows of targets), got "
                     f"shape {w.shape}.")
  w = w.astype(dtype)
  if np.any(w < 0):
    i = int(np.argmin(w))
    raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {w[i]}.")
  return w


def _check_groups(groups, num_groups, n: Optional[int], name_n: str = "n"):
  """groups: [n] ints in [0, num_groups) (num_groups default max + 1). (groups, g)."""
  groups = np.asarray(groups)
  if n is not None and groups.shape != (n,):
    raise ValueError(f"groups must have shape [{name_n}] = ({n},), got shape {groups.shape}.")
  if groups.ndim != 1:
    raise ValueError(f"groups must have shape [n], got shape {groups.shape}.")
  if groups.dtype.kind not in "iu":
    raise ValueError(f"groups must be an integer array, got dtype {groups.dtype}.")
  if num_groups is not None:
    num_groups = _check_int("num_groups", num_groups, 1)
  if groups.size:
    lo, hi = int(groups.min()), int(groups.max())
    limit = num_groups if num_groups is not None else hi + 1
    if lo < 0 or hi >= limit:
      bound = f"num_groups = {num_groups}" if num_groups is not None else "num_groups"
      raise ValueError(f"groups must be integers in [0, {bound}), got values in "
                       f"[{lo}, {hi}].")
    g = limit
  else:
    if num_groups is None:
      raise ValueError("groups is empty: pass num_groups.")
    g = num_groups
  return groups, g


# ----------------------------------------------------------------------------------------
# Detection.
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Reweighting.
# ----------------------------------------------------------------------------------------


def normalized_sgd(learning_rate: float) -> optax.GradientTransformation:
  """SGD on g / max|g|: `learning_rate` is the largest weight change of a step (unit-free).

  The raw derivative scales with 1/n (mean loss) and with reg; normalising makes one
  learning rate work across datasets. Plain `optax.sgd` is equally accepted by `reweight`.
  """
  learning_rate = _check_real("learning_rate", learning_rate, positive=True)

  def scale(updates, state, params=None):
    del params
    m = jnp.max(jnp.abs(updates))
    return jnp.where(m > 0, updates / m, updates), state
  return optax.chain(optax.GradientTransformation(lambda p: optax.EmptyState(), scale),
                     optax.sgd(learning_rate))


class ReweightResult(NamedTuple):
  weights: np.ndarray          # [n] final weights (>= 0)
  losses: np.ndarray           # [steps + 1] LOO loss before each step and after the last
  derivatives: np.ndarray      # [steps, n] derivative at each step


def reweight(weights, targets, *, features=None, kernel=None, reg, steps: int = 1,
             optimizer: Optional[optax.GradientTransformation] = None,
             learning_rate: float = 0.2, loss: str = "mse", eval_mask=None,
             temperature: float = 1.0, max_weight: Optional[float] = None) -> ReweightResult:
  """Projected gradient steps on the sample weights: a <- max(0, a - step(dL_loo/da)).

  Args:
    weights: [n] starting weights >= 0 (usually ones); bool or integer weights are cast to
      the float dtype of features / kernel.
    targets, features, kernel, reg, loss, eval_mask, temperature: as in `diva_jax.loo_loss`.
    steps: number of steps, an integer >= 0 (1-3 recommended: the LOO estimate is unbiased
      only at the first).
    optimizer: an optax transformation; default `normalized_sgd(learning_rate)`.
    learning_rate: used by the default optimizer (largest weight change per step), > 0.
    max_weight: optional upper bound > 0 (projection onto [0, max_weight]).

  Returns:
    A `ReweightResult`.
  """
  n = _check_data(targets, features, kernel)
  # Integer / bool weights are cast to float here: optax keeps the parameters' dtype, so an
  # int array would be rounded back to integers after every step.
  weights = _check_weights("weights", weights, n,
                           _float_dtype(features, kernel, targets))
  _check_reg(reg)
  _check_loss(loss, temperature)
  if eval_mask is not None:
    eval_mask = _check_mask("eval_mask", eval_mask, n)
  steps = _check_int("steps", steps, 0)
  learning_rate = _check_real("learning_rate", learning_rate, positive=True)
  if max_weight is not None:
    max_weight = _check_real("max_weight", max_weight, positive=True)
  opt = _check_optimizer(optimizer, learning_rate)
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=eval_mask,
            temperature=temperature)
  w, losses, derivs = _projected_descent(
      weights, lambda w: _loo.loo_loss_and_derivative(w, targets, **kw),
      lambda w: _loo.loo_loss(w, targets, **kw), steps, opt, max_weight)
  return ReweightResult(w, losses, derivs)


def _check_optimizer(optimizer, learning_rate):
  if optimizer is None:
    return normalized_sgd(learning_rate)
  if not (callable(getattr(optimizer, "init", None))
          and callable(getattr(optimizer, "update", None))):
    raise ValueError(f"optimizer must be an optax.GradientTransformation (with init and "
                     f"update), got {type(optimizer).__name__}.")
  return optimizer


def _projected_descent(x0, value_and_grad, value, steps, opt, upper=None):
  """`steps` optax steps on x >= 0 (<= upper): (x, losses [steps + 1], grads [steps, m]).

  Arguments are validated by the callers; x0 is a float array.
  """
  x = jnp.asarray(x0)
  state = opt.init(x)
  losses, grads = [], []
  for _ in range(steps):
    v, g = value_and_grad(x)
    losses.append(float(v))
    grads.append(np.asarray(g))
    updates, state = opt.update(jnp.asarray(g), state, x)
    x = optax.projections.projection_non_negative(optax.apply_updates(x, updates))
    if upper is not None:
      x = jnp.minimum(x, upper)
  losses.append(float(value(x)))
  return np.asarray(x), np.asarray(losses), np.asarray(grads).reshape(len(grads), x.shape[0])


# ----------------------------------------------------------------------------------------
# Extension from a pool.
# ----------------------------------------------------------------------------------------


class ExtendResult(NamedTuple):
  selected: np.ndarray          # [m] pool indices (into the full arrays) in the order added
  rounds: list                  # per round: (indices added, core LOO loss before the round)
  weights: np.ndarray           # [n] final weights (core 1, selected 1, rest 0)
  stopped: str                  # "budget", "no_helpful_sample" or "pool_exhausted"


def extend(core_mask, targets, *, features=None, kernel=None, reg, k: int = 10,
           budget: Optional[int] = None, loss: str = "mse", temperature: float = 1.0,
           progress: Optional[Callable[[int, int], None]] = None) -> ExtendResult:
  """Greedy dataset extension by the dataset derivative.

  Core samples start at weight 1, pool samples (`~core_mask`) at 0; the LOO loss is
  evaluated on the core only (a pool sample cannot vote for itself). Each round computes
  the derivative and adds the k pool samples with the most negative one (setting their
  weight to 1), until no remaining pool sample has a negative derivative or `budget`
  samples were added.

  Args:
    core_mask: [n] bool (or 0/1), True for the core set; at least one True.
    targets, features, kernel, reg, loss, temperature: as in `diva_jax.loo_loss`.
    k: samples added per round, an integer >= 1.
    budget: the most pool samples to add, an integer in [0, pool size] (default: the whole
      pool).
    progress: called as progress(added, budget) after each round.
  """
  n = _check_data(targets, features, kernel)
  core = _check_mask("core_mask", core_mask, n)
  pool_size = int((~core).sum())
  if not core.any():
    raise ValueError("core_mask selects no sample: the core set is empty.")
  _check_reg(reg)
  _check_loss(loss, temperature)
  k = _check_int("k", k, 1)
  if budget is None:
    budget = pool_size
  budget = _check_int("budget", budget, 0)
  if budget > pool_size:
    raise ValueError(f"budget must be in [0, pool size = {pool_size}], got {budget}.")
  if progress is not None and not callable(progress):
    raise ValueError(f"progress must be callable or None, got {type(progress).__name__}.")
  weights = core.astype(_float_dtype(features, kernel, targets))
  available = ~core
  selected, rounds = [], []
  stopped = "budget"
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=core,
            temperature=temperature)
  while len(selected) < budget:
    if not available.any():
      stopped = "pool_exhausted"
      break
    value, deriv = _loo.loo_loss_and_derivative(weights, targets, **kw)
    deriv = np.asarray(deriv)
    cand = np.flatnonzero(available & (deriv < 0))
    if cand.size == 0:
      stopped = "no_helpful_sample"
      break
    take = cand[np.argsort(deriv[cand], kind="stable")][: min(k, budget - len(selected))]
    weights[take] = 1.0
    available[take] = False
    selected.extend(int(i) for i in take)
    rounds.append((take, float(value)))
    if progress is not None:
      progress(len(selected), budget)
  return ExtendResult(np.asarray(selected, int), rounds, weights, stopped)


# ----------------------------------------------------------------------------------------
# Group weights.
# ----------------------------------------------------------------------------------------


def group_derivative(derivative, groups, num_groups: Optional[int] = None) -> np.ndarray:
  """d L / d (group weight) = sum of the members' derivatives  [num_groups].

  With per-sample weights a_i = b_{groups[i]} * base_i this is the chain rule at base = 1;
  for general base weights pass derivative * base.

  Args:
    derivative: [n] finite per-sample derivative.
    groups: [n] integers in [0, num_groups).
    num_groups: integer >= 1 (default groups.max() + 1).
  """
  d = _check_array("derivative", derivative, "[n]", 1)
  groups, g = _check_groups(groups, num_groups, d.shape[0])
  return np.bincount(groups, weights=d.astype(np.float64), minlength=g)


class GroupReweightResult(NamedTuple):
  group_weights: np.ndarray    # [g]
  losses: np.ndarray           # [steps + 1]
  group_derivatives: np.ndarray  # [steps, g]


def reweight_groups(groups, targets, *, num_groups: Optional[int] = None, features=None,
                    kernel=None, reg, steps: int = 1, learning_rate: float = 0.2,
                    optimizer: Optional[optax.GradientTransformation] = None,
                    loss: str = "mse", eval_mask=None, temperature: float = 1.0,
                    base_weights=None) -> GroupReweightResult:
  """Projected gradient steps on one weight per group (a_i = b[groups[i]] * base_i).

  Args:
    groups: [n] integers in [0, num_groups).
    num_groups: integer >= 1 (default groups.max() + 1); groups with no member keep their
      weight (their derivative is 0).
    base_weights: [n] weights >= 0 (default ones), cast to the float dtype of the features.
    Others: as in `reweight`; the group weights start at 1.
  """
  n = _check_data(targets, features, kernel)
  groups, g = _check_groups(groups, num_groups, n)
  dtype = _float_dtype(features, kernel, targets)
  base = (np.ones(n, dtype) if base_weights is None
          else _check_weights("base_weights", base_weights, n, dtype))
  _check_reg(reg)
  _check_loss(loss, temperature)
  if eval_mask is not None:
    eval_mask = _check_mask("eval_mask", eval_mask, n)
  steps = _check_int("steps", steps, 0)
  learning_rate = _check_real("learning_rate", learning_rate, positive=True)
  opt = _check_optimizer(optimizer, learning_rate)
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=eval_mask,
            temperature=temperature)

  def value_and_grad(b):
    value, deriv = _loo.loo_loss_and_derivative(np.asarray(b)[groups] * base, targets, **kw)
    return value, group_derivative(np.asarray(deriv) * base, groups, g)

  b, losses, derivs = _projected_descent(
      np.ones(g, dtype), value_and_grad,
      lambda b: _loo.loo_loss(np.asarray(b)[groups] * base, targets, **kw), steps, opt)
  return GroupReweightResult(b, losses, derivs)


def tune_augmentations(features_per_transform, targets, *, reg, steps: int = 1,
                       learning_rate: float = 0.2, loss: str = "mse",
                       temperature: float = 1.0):
  """Augmentation probabilities from group reweighting.

  Args:
    features_per_transform: [t, n, d]: the features of the n samples under each of t
      transforms (floating point, finite); transform 0 must be the identity (the LOO loss
      is evaluated on it).
    targets: [n, c] (shared by the copies).
    reg, steps, learning_rate, loss, temperature: as in `reweight_groups`.

  Returns:
    (probabilities [t] = each transform's share of the total weight, GroupReweightResult).
  """
  ts = np.shape(targets)
  if len(ts) != 2:
    hint = " (for a single output use targets[:, None])" if len(ts) == 1 else ""
    raise ValueError(f"targets must have shape [n, c], got shape {ts}{hint}.")
  f = _check_array("features_per_transform", features_per_transform, "[t, n, d]", 3,
                   kinds="f")
  if f.shape[1] != ts[0] or f.shape[0] < 1:
    raise ValueError(f"features_per_transform must have shape [t, n, d] with t >= 1 and "
                     f"n = {ts[0]} (the rows of targets), got {f.shape}.")
  t, n, d = f.shape
  groups = np.repeat(np.arange(t), n)
  # The LOO loss is evaluated on the untransformed copy (transform 0) only: the goal is the
  # error on real data, and a transform's own copies must not vote for themselves.
  res = reweight_groups(groups, np.tile(np.asarray(targets), (t, 1)), num_groups=t,
                        features=f.reshape(t * n, d), reg=reg, steps=steps,
                        eval_mask=groups == 0,
                        learning_rate=learning_rate, loss=loss, temperature=temperature)
  total = res.group_weights.sum()
  probs = res.group_weights / total if total > 0 else np.full(t, 1.0 / t)
  return probs, res
