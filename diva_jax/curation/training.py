"""DIVA in a training loop: per-sample weights that live next to the model's parameters.

At a chosen interval the dataset derivative of the exact LOO loss is taken around the
*current* network (its current penultimate features, or projected Jacobian features of its
trainable part), the weights take one projected step (non-negative; `normalized_sgd` by
default, any optax transformation otherwise), and the parameter step uses the weighted loss.
No validation set is involved: the LOO loss on the training set is the criterion.

The API is functional, like optax's: state in, state out, no hidden globals.

    tx = training.weight_optimizer(learning_rate=0.2)
    state = training.init(num_samples, tx)
    for epoch in range(epochs):
      if epoch % interval == 0:
        feats = penultimate(params, x_train)                     # [n, d], current network
        state = training.update(state, tx, feats, targets)       # one weight step
      for idx in batches:
        grads = jax.grad(lambda p: training.weighted_mean(
            per_sample_loss(p, x_train[idx], y_train[idx]), state.weights[idx]))(params)
        ...

`update` with `reg=None` chooses the reg by exact LOO on the current features (eager only);
with a given reg it is jittable (pass `tx` as a static argument or close over it).

`search_update` lets the LOO loss choose the step size instead of a fixed learning rate: a
backtracking (Armijo) line search along the normalised derivative, from a largest weight
change `max_step`, halving until the LOO loss on the current features decreases enough
(eager: the search evaluates the loss).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diva_jax.curation import checks as cc
from diva_jax.curation import steps as _steps
from diva_jax.curation.steps import normalized_sgd
from diva_jax.loo import api as _loo
from diva_jax.loo import reg as _reg

__all__ = ["DivaState", "weight_optimizer", "init", "update", "search_update",
           "weighted_mean", "features_reg"]


class DivaState(NamedTuple):
  """Per-sample weights and the optimiser state of their steps (a pytree: checkpoint it
  with the model's parameters)."""
  weights: jax.Array          # [n] >= 0, 1 at the start
  opt_state: Any              # the weight optimiser's state
  step: jax.Array             # int32: weight steps taken
  derivative: jax.Array       # [n] the derivative of the last step (0 before the first)
  loo_loss: jax.Array         # the LOO loss at the last step (NaN before the first)


def weight_optimizer(learning_rate: float = 0.2) -> optax.GradientTransformation:
  """The default weight step: the normalised gradient, largest weight change
  `learning_rate` per step (`normalized_sgd`)."""
  return normalized_sgd(learning_rate)


def init(num_samples: int, tx: optax.GradientTransformation,
         dtype=jnp.float32) -> DivaState:
  """Weights 1 for `num_samples` samples, and `tx`'s state for them."""
  n = cc.check_int("num_samples", num_samples, 1)
  w = jnp.ones((n,), dtype)
  return DivaState(w, tx.init(w), jnp.zeros((), jnp.int32), jnp.zeros((n,), dtype),
                   jnp.asarray(jnp.nan, dtype))


def features_reg(features, targets, *, loss: str = "ce", temperature: float = 0.3,
                 multiplier: float = 10.0) -> float:
  """The library's detection reg on these features: `multiplier` x the exact-LOO optimum
  (`select_reg`) of the given loss. Eager (float64 eigendecomposition)."""
  sel = _reg.select_reg(targets, features=features, loss=loss, temperature=temperature)
  return float(sel.reg) * cc.check_real("multiplier", multiplier, positive=True)


def update(state: DivaState, tx: optax.GradientTransformation, features, targets, *,
           reg: Optional[float] = None, loss: str = "ce", temperature: float = 0.3,
           derivative_reg_multiplier: float = 10.0, max_weight: Optional[float] = None,
           backend: str = "auto") -> DivaState:
  """One projected step of the weights on the dataset derivative at the current features.

  Args:
    state: from `init` or a previous `update`.
    tx: the weight optimiser (`weight_optimizer()` or any optax transformation).
    features: [n, d] the current network's features of every training sample (e.g. its
      penultimate activations with a bias column, or projected Jacobian features).
    targets: [n, c] one-hot (noisy) labels.
    reg: the ridge reg of the LOO head; None: `features_reg` (exact-LOO optimum x
      `derivative_reg_multiplier`, eager).
    loss, temperature: the LOO loss (cross-entropy at T = 0.3: the detection setting).
    derivative_reg_multiplier: see `reg`.
    max_weight: optional upper bound of the weights (projection onto [0, max_weight]).
    backend: as in `loo_loss_and_derivative`.

  Returns:
    The new `DivaState`: weights max(0, w - step(dL_loo/dw)), its derivative and LOO loss.
  """
  _check_shapes(state, features, targets)
  if max_weight is not None:
    max_weight = cc.check_real("max_weight", max_weight, positive=True)
  if reg is None:
    reg = features_reg(features, targets, loss=loss, temperature=temperature,
                       multiplier=derivative_reg_multiplier)
  value, deriv = _loo.loo_loss_and_derivative(
      state.weights, jnp.asarray(targets, state.weights.dtype), features=features, reg=reg,
      loss=loss, temperature=temperature, backend=backend)
  deriv = jnp.asarray(deriv, state.weights.dtype)
  updates, opt_state = tx.update(deriv, state.opt_state, state.weights)
  w = jnp.maximum(optax.apply_updates(state.weights, updates), 0.0)
  if max_weight is not None:
    w = jnp.minimum(w, max_weight)
  return DivaState(w, opt_state, state.step + 1, deriv,
                   jnp.asarray(value, state.weights.dtype))


def search_update(state: DivaState, features, targets, *, reg: Optional[float] = None,
                  max_step: float = 1.0, steps: int = 1, max_backtracks: int = 10,
                  armijo: float = 1e-4, loss: str = "ce", temperature: float = 0.3,
                  derivative_reg_multiplier: float = 10.0, max_weight: Optional[float] = None
                  ) -> DivaState:
  """`steps` weight steps whose size the LOO loss chooses (no learning rate to tune).

  The line search of `curation.reweight(line_search=True)`, on the current features.

  Each step is a backtracking (Armijo) line search along -g / max|g|, g the dataset
  derivative at the current weights: the largest weight change starts at `max_step` and is
  halved (up to `max_backtracks` times) until L(w_new) <= L(w) + armijo * <g, w_new - w>,
  with w_new = max(0, w - step * g / max|g|) (and <= max_weight). A step with no acceptable
  size leaves the weights unchanged, and so do the steps after it. All steps are on the same
  features: the LOO loss is a function of the weights alone while the network is held.

  Args:
    state: from `init` or a previous update (its `opt_state` is carried unchanged).
    features, targets, reg, loss, temperature, derivative_reg_multiplier, max_weight: as in
      `update`.
    max_step: the largest weight change tried first, > 0 (1: a weight may go from 1 to 0).
    steps: line-searched steps on these features, an integer >= 1.
    max_backtracks: halvings tried per step, an integer >= 0.
    armijo: the sufficient-decrease constant, in [0, 1).

  Returns:
    The new `DivaState`: `step` counts every step taken; `derivative` and `loo_loss` are the
    last step's (at the weights it started from). Eager.
  """
  _check_shapes(state, features, targets)
  steps = cc.check_int("steps", steps, 1)
  if reg is None:
    reg = features_reg(features, targets, loss=loss, temperature=temperature,
                       multiplier=derivative_reg_multiplier)
  dtype = state.weights.dtype
  res = _steps.reweight(state.weights, jnp.asarray(targets, dtype), features=features,
                        reg=reg, steps=steps, learning_rate=max_step, loss=loss,
                        temperature=temperature, max_weight=max_weight, line_search=True,
                        max_backtracks=max_backtracks, armijo=armijo)
  return DivaState(jnp.asarray(res.weights, dtype), state.opt_state, state.step + steps,
                   jnp.asarray(res.derivatives[-1], dtype), jnp.asarray(res.losses[-2], dtype))


def _check_shapes(state: DivaState, features, targets) -> None:
  n = state.weights.shape[0]
  if np.ndim(features) != 2 or np.shape(features)[0] != n:
    raise ValueError(f"features must have shape [n, d] with n = {n} (the weights), got shape "
                     f"{np.shape(features)}.")
  if np.ndim(targets) != 2 or np.shape(targets)[0] != n:
    raise ValueError(f"targets must have shape [n, c] with n = {n} (the weights), got shape "
                     f"{np.shape(targets)}.")


def weighted_mean(per_sample_losses, weights):
  """sum_i w_i l_i / sum_i w_i: the parameter step's loss on a batch (0 if every weight is
  0). Normalised by the batch's weight so the parameter learning rate keeps its meaning."""
  w = jnp.asarray(weights, per_sample_losses.dtype)
  total = jnp.sum(w)
  return jnp.where(total > 0, jnp.sum(w * per_sample_losses) / jnp.where(total > 0, total, 1),
                   0.0)
