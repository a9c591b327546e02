"""Dataset curation with the dataset derivative (the DIVA paper's section 4).

Algorithms over the LOO core, as plain functions a researcher composes:

* `detect_detrimental` / `detection_metrics`: flag samples whose derivative at weight 1 is
  above eps (they hurt); F1 at one eps and AUROC over all eps against a known noise mask.
* `reweight`: 1-3 projected gradient steps on the weights with optax (weights stay >= 0),
  or a backtracking line search on the LOO loss (`line_search=True`). Many or large steps
  over-fit the LOO estimate, which is unbiased only at the first step: on clean data no step
  rule beat a random reweighting of the same spread (`experiments.reweight_study`), so the
  default stays one small normalised step.
* `extend`: add pool samples (weight 0 -> 1) with the most negative derivative, k at a time,
  the LOO loss evaluated on the core only (or on core + picks), reg fixed or re-chosen each
  round, until none helps or the budget is reached.
* `group_derivative` / `reweight_groups`: one weight per group (modality, source, class,
  augmentation); a group's derivative is the sum of its members'. The basis of multi-modal
  aggregation, class rebalancing and `tune_augmentations`.

All take the same `features=` / `kernel=` / `reg` / `loss` arguments as `diva_jax.loo_loss`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
import optax

from diva_jax.loo import api as _loo
from diva_jax.curation.checks import check_array as _check_array
from diva_jax.curation.checks import check_data as _check_data
from diva_jax.curation.checks import check_groups as _check_groups
from diva_jax.curation.checks import check_int as _check_int
from diva_jax.curation.checks import check_loss as _check_loss
from diva_jax.curation.checks import check_mask as _check_mask
from diva_jax.curation.checks import check_real as _check_real
from diva_jax.curation.checks import check_reg as _check_reg
from diva_jax.curation.checks import check_weights as _check_weights
from diva_jax.curation.checks import float_dtype as _float_dtype
from diva_jax.loo import checks as _loo_checks
from diva_jax.curation.detect import DetectionMetrics  # re-exported: curation's public names
from diva_jax.curation.detect import auroc
from diva_jax.curation.detect import detect_detrimental
from diva_jax.curation.detect import detection_metrics
from diva_jax.curation.detect import estimate_num_issues  # noqa: F401  (re-exported)

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
             temperature: float = 1.0, max_weight: Optional[float] = None,
             line_search: bool = False, max_backtracks: int = 10,
             armijo: float = 1e-4, outer: str = "mean") -> ReweightResult:
  """Projected gradient steps on the sample weights: a <- max(0, a - step(dL_loo/da)).

  Step rules (README, "Reweighting: which step rule"; on clean data none of them lowered the
  test error beyond a random reweighting of the same spread, so keep the steps small):

  * default: `normalized_sgd(learning_rate)`, the largest weight change of a step is
    `learning_rate`;
  * the paper's raw step on the summed LOO loss, a <- a - eta * n * dL_mean/da:
    `optimizer=optax.sgd(eta * n)` (eta about 0.1);
  * `line_search=True`: a backtracking (Armijo) line search on the LOO loss along the
    normalised gradient, starting at a largest weight change of `learning_rate` and halving
    it up to `max_backtracks` times until L(a_new) <= L(a) + armijo * <dL/da, a_new - a>; a
    step with no acceptable size leaves the weights unchanged.

  Args:
    weights: [n] starting weights >= 0 (usually ones); bool or integer weights are cast to
      the float dtype of features / kernel.
    targets, features, kernel, reg, loss, eval_mask, temperature: as in `diva_jax.loo_loss`.
    steps: number of steps, an integer >= 0 (1-3 recommended: the LOO estimate is unbiased
      only at the first).
    optimizer: an optax transformation; default `normalized_sgd(learning_rate)`. Not
      combinable with `line_search`.
    learning_rate: used by the default optimizer and the line search (largest weight change
      per step), > 0.
    max_weight: optional upper bound > 0 (projection onto [0, max_weight]).
    line_search: backtracking line search on the LOO loss (see above).
    max_backtracks: halvings tried per step by the line search, an integer >= 0.
    armijo: sufficient-decrease constant of the line search, in [0, 1).
    outer: the LOO loss's outer mean, "mean" (default, the paper's) or "weighted" (as in
      `diva_jax.loo_loss`). Weighted, the loss can also fall by concentrating the weight on
      the samples it fits best, so keep the steps few.

  Returns:
    A `ReweightResult` (with `line_search`, `losses` is the LOO loss at each accepted iterate).
  """
  n = _check_data(targets, features, kernel)
  # Integer / bool weights are cast to float here: optax keeps the parameters' dtype, so an
  # int array would be rounded back to integers after every step.
  weights = _check_weights("weights", weights, n,
                           _float_dtype(features, kernel, targets))
  eval_mask, steps, opt = _check_step_args(n, reg, loss, temperature, eval_mask, steps,
                                            learning_rate, optimizer)
  if max_weight is not None:
    max_weight = _check_real("max_weight", max_weight, positive=True)
  if not isinstance(line_search, (bool, np.bool_)):
    raise ValueError(f"line_search must be True or False, got {line_search!r}.")
  search = None
  if line_search:
    if optimizer is not None:
      raise ValueError("line_search=True takes its steps along the normalised gradient: pass "
                       "either an optimizer or line_search=True, not both.")
    max_backtracks = _check_int("max_backtracks", max_backtracks, 0)
    armijo = _check_real("armijo", armijo)
    if not 0 <= armijo < 1:
      raise ValueError(f"armijo must be in [0, 1), got {armijo}.")
    search = (float(learning_rate), max_backtracks, armijo)
  _loo_checks.check_outer(outer)
  kw = dict(features=features, kernel=kernel, reg=reg, loss=loss, eval_mask=eval_mask,
            temperature=temperature, outer=outer)
  w, losses, derivs = _projected_descent(
      weights, lambda w: _loo.loo_loss_and_derivative(w, targets, **kw),
      lambda w: _loo.loo_loss(w, targets, **kw), steps, opt, max_weight, search)
  return ReweightResult(w, losses, derivs)


def _check_step_args(n, reg, loss, temperature, eval_mask, steps, learning_rate, optimizer):
  """The arguments shared by the weight-step functions: (eval_mask, steps, optimizer)."""
  _check_reg(reg)
  _check_loss(loss, temperature)
  if eval_mask is not None:
    eval_mask = _check_mask("eval_mask", eval_mask, n)
  steps = _check_int("steps", steps, 0)
  learning_rate = _check_real("learning_rate", learning_rate, positive=True)
  return eval_mask, steps, _check_optimizer(optimizer, learning_rate)


def _check_optimizer(optimizer, learning_rate):
  if optimizer is None:
    return normalized_sgd(learning_rate)
  if not (callable(getattr(optimizer, "init", None))
          and callable(getattr(optimizer, "update", None))):
    raise ValueError(f"optimizer must be an optax.GradientTransformation (with init and "
                     f"update), got {type(optimizer).__name__}.")
  return optimizer


def _projected_descent(x0, value_and_grad, value, steps, opt, upper=None, search=None):
  """`steps` optax steps on x >= 0 (<= upper): (x, losses [steps + 1], grads [steps, m]).

  With `search = (largest step, max backtracks, armijo)` each step is instead a backtracking
  line search on `value` along -g / max|g| (see `reweight`). Arguments are validated by the
  callers; x0 is a float array.
  """
  x = jnp.asarray(x0)
  state = opt.init(x)
  losses, grads = [], []
  project = lambda y: (optax.projections.projection_non_negative(y) if upper is None
                       else jnp.minimum(optax.projections.projection_non_negative(y), upper))
  last, stuck = None, None
  for _ in range(steps):
    # A line search that found no acceptable step leaves x unchanged: so would the next ones.
    v, g = stuck if stuck is not None else value_and_grad(x)
    losses.append(float(v))
    grads.append(np.asarray(g))
    if stuck is not None:
      continue
    if search is None:
      updates, state = opt.update(jnp.asarray(g), state, x)
      x = project(optax.apply_updates(x, updates))
      continue
    lr, backtracks, c = search
    g = jnp.asarray(g, x.dtype)
    scale = float(jnp.max(jnp.abs(g)))
    last = None
    if scale > 0:
      for _ in range(backtracks + 1):
        x_new = project(x - (lr / scale) * g)
        v_new = float(value(x_new))
        if np.isfinite(v_new) and v_new <= float(v) + c * float(jnp.vdot(g, x_new - x)):
          x, last = x_new, v_new
          break
        lr /= 2
    if last is None:
      stuck, last = (v, g), float(v)
  losses.append(last if search is not None and last is not None else float(value(x)))
  return np.asarray(x), np.asarray(losses), np.asarray(grads).reshape(len(grads), x.shape[0])


# ----------------------------------------------------------------------------------------
# Extension from a pool.
# ----------------------------------------------------------------------------------------


class ExtendResult(NamedTuple):
  selected: np.ndarray          # [m] pool indices (into the full arrays) in the order added
  rounds: list                  # per round: (indices added, evaluated LOO loss before it)
  weights: np.ndarray           # [n] final weights (core 1, selected 1, rest 0)
  stopped: str                  # "budget", "no_helpful_sample" or "pool_exhausted"


def extend(core_mask, targets, *, features=None, kernel=None, reg, k: int = 10,
           budget: Optional[int] = None, loss: str = "mse", temperature: float = 1.0,
           progress: Optional[Callable[[int, int], None]] = None,
           evaluate_on: str = "core") -> ExtendResult:
  """Greedy dataset extension by the dataset derivative.

  Core samples start at weight 1, pool samples (`~core_mask`) at 0; the LOO loss is
  evaluated on the core only (a pool sample cannot vote for itself). Each round computes
  the derivative and adds the k pool samples with the most negative one (setting their
  weight to 1), until no remaining pool sample has a negative derivative or `budget`
  samples were added.

  Args:
    core_mask: [n] bool (or 0/1), True for the core set; at least one True.
    targets, features, kernel, loss, temperature: as in `diva_jax.loo_loss`.
    reg: > 0 as in `diva_jax.loo_loss`, or a callable `reg(train_mask)` -> reg > 0 called
      each round with the [n] bool mask of the current training set (core + picks), e.g. to
      re-choose reg by exact LOO as the set grows.
    k: samples added per round, an integer >= 1.
    budget: the most pool samples to add, an integer in [0, pool size] (default: the whole
      pool).
    progress: called as progress(added, budget) after each round.
    evaluate_on: 'core' (the paper's rule) or 'core+picks': the LOO loss is evaluated on the
      core and the samples added so far (picks then vote on later picks; their labels are
      trusted once picked).
  """
  n = _check_data(targets, features, kernel)
  core = _check_mask("core_mask", core_mask, n)
  pool_size = int((~core).sum())
  if not core.any():
    raise ValueError("core_mask selects no sample: the core set is empty.")
  if not callable(reg):
    _check_reg(reg)
  if evaluate_on not in ("core", "core+picks"):
    raise ValueError(f"evaluate_on must be 'core' or 'core+picks', got {evaluate_on!r}.")
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
  kw = dict(features=features, kernel=kernel, loss=loss, temperature=temperature)
  while len(selected) < budget:
    if not available.any():
      stopped = "pool_exhausted"
      break
    train = weights > 0
    if callable(reg):
      r = reg(train.copy())
      try:
        r = _check_real("reg(train_mask)", r, positive=True)
      except ValueError as e:
        raise ValueError(f"the reg callable must return a finite number > 0: {e}") from e
    else:
      r = reg
    value, deriv = _loo.loo_loss_and_derivative(
        weights, targets, reg=r, eval_mask=core if evaluate_on == "core" else train, **kw)
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
  eval_mask, steps, opt = _check_step_args(n, reg, loss, temperature, eval_mask, steps,
                                            learning_rate, optimizer)
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
