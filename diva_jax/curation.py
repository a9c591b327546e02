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
# Detection.
# ----------------------------------------------------------------------------------------


def detect_detrimental(derivative, eps: float = 0.0) -> np.ndarray:
  """Samples that hurt: derivative > eps (at weight 1).  [n] bool."""
  return np.asarray(derivative) > eps


def auroc(scores, labels) -> float:
  """Area under the ROC curve of `scores` for the positives `labels` (ties count half).

  Equal to the Mann-Whitney U statistic / (n_pos n_neg); no scikit-learn needed.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}.")
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
  scores = np.asarray(scores)
  noisy = np.asarray(noisy_mask, bool)
  if scores.shape != noisy.shape:
    raise ValueError(f"scores shape {scores.shape} and noisy_mask shape {noisy.shape} differ.")
  flagged = scores > eps
  tp = int(np.sum(flagged & noisy))
  precision = tp / max(int(flagged.sum()), 1)
  recall = tp / max(int(noisy.sum()), 1)
  f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
  return DetectionMetrics(f1, precision, recall, auroc(scores, noisy), int(flagged.sum()))


# ----------------------------------------------------------------------------------------
# Reweighting.
# ----------------------------------------------------------------------------------------


def normalized_sgd(learning_rate: float) -> optax.GradientTransformation:
  """SGD on g / max|g|: `learning_rate` is the largest weight change of a step (unit-free).

  The raw derivative scales with 1/n (mean loss) and with reg; normalising makes one
  learning rate work across datasets. Plain `optax.sgd` is equally accepted by `reweight`.
  """
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
    weights: [n] starting weights (usually ones).
    targets, features, kernel, reg, loss, eval_mask, temperature: as in `diva_jax.loo_loss`.
    steps: number of steps (1-3 recommended: the LOO estimate is unbiased only at the first).
    optimizer: an optax transformation; default `normalized_sgd(learning_rate)`.
    learning_rate: used by the default optimizer (largest weight change per step).
    max_weight: optional upper bound (projection onto [0, max_weight]).

  Returns:
    A `ReweightResult`.
  """
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=eval_mask,
            temperature=temperature)
  w, losses, derivs = _projected_descent(
      weights, lambda w: _loo.loo_loss_and_derivative(w, targets, **kw),
      lambda w: _loo.loo_loss(w, targets, **kw), steps,
      optimizer if optimizer is not None else normalized_sgd(learning_rate), max_weight)
  return ReweightResult(w, losses, derivs)


def _projected_descent(x0, value_and_grad, value, steps, opt, upper=None):
  """`steps` optax steps on x >= 0 (<= upper): (x, losses [steps + 1], grads [steps, m])."""
  if not (isinstance(steps, int) and steps >= 0):
    raise ValueError(f"steps must be an int >= 0, got {steps!r}.")
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
    core_mask: [n] bool, True for the core set.
    targets, features, kernel, reg, loss, temperature: as in `diva_jax.loo_loss`.
    k: samples added per round.
    budget: the most pool samples to add (default: the whole pool).
    progress: called as progress(added, budget) after each round.
  """
  core = np.asarray(core_mask, bool)
  if core.ndim != 1 or core.shape[0] != np.shape(targets)[0]:
    raise ValueError(f"core_mask must have shape [n] = ({np.shape(targets)[0]},), got "
                     f"{core.shape}.")
  pool_size = int((~core).sum())
  if not core.any():
    raise ValueError("core_mask selects no sample: the core set is empty.")
  if budget is None:
    budget = pool_size
  if not (isinstance(k, int) and k >= 1):
    raise ValueError(f"k must be an int >= 1, got {k!r}.")
  if budget < 0 or budget > pool_size:
    raise ValueError(f"budget must be in [0, pool size = {pool_size}], got {budget}.")
  weights = core.astype(np.float64 if jax.config.jax_enable_x64 else np.float32)
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
  """
  groups = np.asarray(groups)
  if groups.shape != np.shape(derivative):
    raise ValueError(f"groups shape {groups.shape} and derivative shape "
                     f"{np.shape(derivative)} differ.")
  return np.bincount(groups, weights=np.asarray(derivative, np.float64),
                     minlength=num_groups or 0)


class GroupReweightResult(NamedTuple):
  group_weights: np.ndarray    # [g]
  losses: np.ndarray           # [steps + 1]
  group_derivatives: np.ndarray  # [steps, g]


def reweight_groups(groups, targets, *, num_groups: Optional[int] = None, features=None,
                    kernel=None, reg, steps: int = 1, learning_rate: float = 0.2,
                    optimizer: Optional[optax.GradientTransformation] = None,
                    loss: str = "mse", eval_mask=None, temperature: float = 1.0,
                    base_weights=None) -> GroupReweightResult:
  """Projected gradient steps on one weight per group (a_i = b[groups[i]] * base_i)."""
  groups = np.asarray(groups)
  n = np.shape(targets)[0]
  if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
    raise ValueError(f"groups must be an int array of shape [n] = ({n},), got "
                     f"{groups.dtype} {groups.shape}.")
  if groups.size and groups.min() < 0:
    raise ValueError("groups must be >= 0.")
  g = num_groups or int(groups.max()) + 1
  base = np.ones(n) if base_weights is None else np.asarray(base_weights)
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=eval_mask,
            temperature=temperature)

  def value_and_grad(b):
    value, deriv = _loo.loo_loss_and_derivative(np.asarray(b)[groups] * base, targets, **kw)
    return value, group_derivative(np.asarray(deriv) * base, groups, g)

  b, losses, derivs = _projected_descent(
      np.ones(g), value_and_grad, lambda b: _loo.loo_loss(np.asarray(b)[groups] * base,
                                                          targets, **kw),
      steps, optimizer if optimizer is not None else normalized_sgd(learning_rate))
  return GroupReweightResult(b, losses, derivs)


def tune_augmentations(features_per_transform, targets, *, reg, steps: int = 1,
                       learning_rate: float = 0.2, loss: str = "mse",
                       temperature: float = 1.0):
  """Augmentation probabilities from group reweighting.

  Args:
    features_per_transform: [t, n, d]: the features of the n samples under each of t
      transforms; transform 0 must be the identity (the LOO loss is evaluated on it).
    targets: [n, c] (shared by the copies).

  Returns:
    (probabilities [t] = each transform's share of the total weight, GroupReweightResult).
  """
  f = np.asarray(features_per_transform)
  if f.ndim != 3 or f.shape[1] != np.shape(targets)[0]:
    raise ValueError(f"features_per_transform must have shape [t, n, d] with n = "
                     f"{np.shape(targets)[0]}, got {f.shape}.")
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
