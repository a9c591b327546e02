"""Ridge predictions on new samples, and the loss and derivative on a separate validation set.

For users who hold out a validation set: `validation_derivative` is the influence-function
quantity dL_val/da_i = mean_v (z_i^T C_a z_v) <r_i, g_v>, exact for the linearised model
(autodiff through the closed-form fit). float32 inputs compute in float64 (the fit at small
reg is ill-conditioned) and come back in float32.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from diva_jax.loo import checks as _checks
from diva_jax.loo.backends import dispatch as _backend
from diva_jax.loo import closed_form as cf
from diva_jax.loo.api import prepare as _prepare

from diva_jax.loo.results import LooResult

__all__ = ["ridge_predict", "validation_loss", "validation_derivative",
           "validation_loss_and_derivative"]

_dot = cf.dot


def _ridge_predict_impl(weights, targets, x, reg, x_test, form):
  """Primal: x [n, d], x_test [m, d]; dual: x = K [n, n], x_test = K(train, test) [n, m]."""
  ay = weights[:, None] * targets
  if form == "primal":
    d = x.shape[1]
    gram = _dot((x * weights[:, None]).T, x) + reg * jnp.eye(d, dtype=x.dtype)
    coef = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(gram), True), _dot(x.T, ay))
    return _dot(x_test, coef)
  n = x.shape[0]
  # Weighted kernel ridge: beta = (A K + reg I)^-1 A Y, predictions K(test, train) beta.
  beta = jnp.linalg.solve(weights[:, None] * x + reg * jnp.eye(n, dtype=x.dtype), ay)
  return _dot(x_test.T, beta)


def _validation_loss_impl(weights, targets, x, reg, x_test, val_targets, temperature,
                          form, loss):
  preds = _ridge_predict_impl(weights, targets, x, reg, x_test, form)
  per = cf.per_sample_loss(loss, preds, val_targets, temperature)
  return jnp.mean(per)


_ridge_predict_jit = jax.jit(_backend.in_float64(_ridge_predict_impl), static_argnames=("form",))
_validation_vg_jit = jax.jit(_backend.in_float64(jax.value_and_grad(_validation_loss_impl)),
                             static_argnames=("form", "loss"))


def _prepare_test(weights, targets, features, kernel, reg, test_features, cross_kernel,
                  test_name):
  args, form = _prepare(weights, targets, features, kernel, reg)
  w, y, x, r, _, _ = args
  n = w.shape[0]
  if form in ("primal", "gram_dual"):
    if test_features is None or cross_kernel is not None:
      raise ValueError(f"With features= pass {test_name}_features= ([m, d]) and no cross_kernel.")
    if jnp.ndim(test_features) != 2 or jnp.shape(test_features)[1] != x.shape[1]:
      raise ValueError(
          f"{test_name}_features must have shape [m, {x.shape[1]}] to match features "
          f"{tuple(x.shape)}, got shape {tuple(jnp.shape(test_features))}.")
    _checks.check_finite(f"{test_name}_features", test_features)
    return (w, y, x, r, jnp.asarray(test_features, x.dtype)), "primal"
  if cross_kernel is None or test_features is not None:
    raise ValueError("With kernel= pass cross_kernel= ([n, m], K(train, test)) and no "
                     f"{test_name}_features.")
  if jnp.ndim(cross_kernel) != 2 or jnp.shape(cross_kernel)[0] != n:
    raise ValueError(f"cross_kernel must have shape [n, m] = [{n}, m] (train x test), got shape "
                     f"{tuple(jnp.shape(cross_kernel))}.")
  _checks.check_finite("cross_kernel", cross_kernel)
  return (w, y, x, r, jnp.asarray(cross_kernel, x.dtype)), "dual"


def ridge_predict(weights: jax.Array, targets: jax.Array, *,
                  features: Optional[jax.Array] = None,
                  kernel: Optional[jax.Array] = None,
                  reg: float | jax.Array,
                  test_features: Optional[jax.Array] = None,
                  cross_kernel: Optional[jax.Array] = None) -> jax.Array:
  """Predictions of the weighted ridge fit on new samples  [m, c].

  Primal: `features` [n, d] and `test_features` [m, d]. Dual: `kernel` [n, n] and
  `cross_kernel` [n, m] = K(train, test).
  """
  args, form = _prepare_test(weights, targets, features, kernel, reg, test_features,
                             cross_kernel, "test")
  out = _backend.call_eager_x64(_ridge_predict_jit, args, form=form)
  return _checks.raise_if_nonfinite(out, reg, "ridge prediction")


def _validation(weights, targets, val_targets, features, val_features, kernel, cross_kernel,
                reg, loss, temperature):
  _checks.check_loss_args(loss, temperature, val_targets)
  args, form = _prepare_test(weights, targets, features, kernel, reg, val_features,
                             cross_kernel, "val")
  m = args[4].shape[0] if form == "primal" else args[4].shape[1]
  if jnp.ndim(val_targets) != 2 or jnp.shape(val_targets) != (m, args[1].shape[1]):
    raise ValueError(f"val_targets must have shape [m, c] = [{m}, {args[1].shape[1]}], got "
                     f"shape {tuple(jnp.shape(val_targets))}.")
  _checks.check_finite("val_targets", val_targets)
  dtype = args[2].dtype
  out = _backend.call_eager_x64(_validation_vg_jit, (*args, jnp.asarray(val_targets, dtype),
                                     jnp.asarray(temperature, dtype)), form=form, loss=loss)
  return _checks.raise_if_nonfinite(out, reg, "validation loss")


def validation_loss(weights, targets, val_targets, *, features=None, val_features=None,
                    kernel=None, cross_kernel=None, reg, loss="mse", temperature=1.0):
  """Mean loss on a separate validation set of the ridge fit with sample weights.

  Args:
    weights, targets, features, kernel, reg, loss, temperature: as in `loo_loss`.
    val_targets: [m, c] validation targets.
    val_features: [m, d] validation features (primal form).
    cross_kernel: [n, m] kernel between training and validation samples (dual form).

  Returns:
    Scalar mean over validation samples of loss(prediction, target).
  """
  return _validation(weights, targets, val_targets, features, val_features, kernel,
                     cross_kernel, reg, loss, temperature)[0]


def validation_derivative(weights, targets, val_targets, *, features=None, val_features=None,
                          kernel=None, cross_kernel=None, reg, loss="mse", temperature=1.0):
  """d validation_loss / d weights  [n]: the influence of each training sample's weight.

  For the linearised model this is exact: dL_val/da_i = mean_v (z_i^T C_a z_v) <r_i, g_v>,
  with r_i the training residual and g_v the loss gradient at validation sample v.
  Arguments as in `validation_loss`.
  """
  return _validation(weights, targets, val_targets, features, val_features, kernel,
                     cross_kernel, reg, loss, temperature)[1]



def validation_loss_and_derivative(weights, targets, val_targets, *, features=None,
                                   val_features=None, kernel=None, cross_kernel=None, reg,
                                   loss="mse", temperature=1.0) -> LooResult:
  """`validation_loss` and `validation_derivative` from one fit, as a `LooResult` (the same
  result type as the LOO entry points; `value` is the validation loss). Arguments as in
  `validation_loss`."""
  value, deriv = _validation(weights, targets, val_targets, features, val_features, kernel,
                             cross_kernel, reg, loss, temperature)
  return LooResult(value, deriv)
