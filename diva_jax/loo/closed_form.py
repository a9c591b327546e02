"""The maths of weighted ridge LOO, written once: losses, reference closed form, gradient tail.

Samples i = 1..n have features z_i [d] (rows of Z [n, d]) or a kernel K = Z Z^T [n, n],
targets y_i [c] (rows of Y [n, c]) and weights a_i >= 0 (A = diag(a)). The weighted ridge fit
minimises sum_i a_i ||W^T z_i - y_i||^2 + reg ||W||^2; its hat matrix is

    primal:  S = Z C_a Z^T,  C_a = (Z^T A Z + reg I)^-1                     [n, n]
    dual:    S = K (reg I + A K)^-1

with fitted values Yhat = S A Y and weighted leverages h_i = a_i S_ii in [0, 1). Leaving i
out is setting a_i = 0, and the exact LOO error is

    e_i = f_loo_i - y_i = (Yhat_i - y_i) / (1 - h_i),

finite and exact for every a_i >= 0. L(a) = mean over evaluated i of loss(f_loo_i, y_i); its
gradient dL/da [n] is the dataset derivative. With r_k = y_k - Yhat_k, g_i = d loss_i / d f
(times the eval mask / n_eval), G~_i = g_i / (1 - h_i) and u_i = <g_i, e_i> / (1 - h_i):

    dL/da_k = <r_k, (S G~)_k> + u_k S_kk - sum_i a_i u_i S_ik^2.          (docs/math.md)

This module holds (1) the per-sample losses, (2) the reference closed form in plain jnp,
which autodiff goes through (`reference_loo_loss`, public, for oracles and benchmarks), and
(3) the value-and-gradient tail above, generic over the array module `xp` (NumPy for the
host BLAS backend, jax.numpy for XLA). Every backend and the streamed passes compute only
the hat-matrix products (S v, S_kk, sum_i w_i S_ik^2) and call this tail: the formula is
written here and nowhere else.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

__all__ = ["LOSSES", "OUTERS", "F32_TOL", "reference_loo_loss", "loss_and_grad", "sample_terms",
           "gradient", "value_and_grad_tail", "outer_mask", "self_term", "check_outer"]

LOSSES = ("mse", "ce")

# The outer mean of the LOO loss. "mean": L(a) = sum_i m_i l_i(a) / sum_i m_i (the paper's
# definition: the weights act only inside the fit). "weighted": L(a) = sum_i a_i m_i l_i(a) /
# sum_i a_i m_i, whose derivative adds the sample's own term m_k (l_k - L) / sum_i a_i m_i
# (docs/math.md, "The weighted outer mean"). At a = 1 both values are equal.
OUTERS = ("mean", "weighted")

# Largest accepted eps32 * kappa / min(1 - h) for a float32 primal result (about 3 digits kept
# in the leverages' complements; tested against float64 over select_reg's grid). Every
# backend and the streamed passes use this one bound.
F32_TOL = 1e-3

dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


def chol_kappa(xp, chol_diag):
  """(max |L_jj| / min |L_jj|)^2 of a Cholesky factor L: a cheap estimate of cond(L L^T)
  from below (it can be much smaller). Enough for the in-memory primal paths, which apply
  L^-1 by triangular solves (checked against float64 over select_reg's range in
  tests/test_precision_paths.py); the streamed passes form C = (L L^T)^-1 explicitly and
  use the exact condition number (`eig_kappa`)."""
  diag = xp.abs(chol_diag).astype(xp.float64 if xp is not jnp else chol_diag.dtype)
  return (xp.max(diag) / xp.min(diag)) ** 2


def eig_kappa(gram, reg, lower: bool = False) -> float:
  """cond(G + reg I) in float64 from the [d, d] Gram G (one triangle read: the upper one
  unless `lower`); O(d^3), like the factorisation itself."""
  g = np.asarray(gram, np.float64)
  ev = np.linalg.eigvalsh(g, UPLO="L" if lower else "U") + float(reg)
  return float(ev.max() / ev.min()) if ev.min() > 0 else float("inf")


def f32_bound(xp, kappa, weights, one_minus_h):
  """The float32 accuracy bound of a primal result: eps32 * kappa / min(1 - h_i), the minimum
  over the samples with weight > 0; kappa from `chol_kappa` or `eig_kappa`. A float32 result
  is kept only when this is <= `F32_TOL`; every path (in-memory host and XLA, streamed host
  and XLA, sharded) decides here. Works for NumPy (`xp=np`) and jax.numpy."""
  min_omh = xp.min(xp.where(weights > 0, one_minus_h, 1.0))
  return xp.finfo(xp.float32).eps * kappa / xp.maximum(min_omh, 1e-30)


def f32_refusal(bound, reg, what: str) -> ValueError:
  """The error of a float32 result that fails `f32_bound` and cannot be redone in float64."""
  return ValueError(
      f"float32 is not accurate enough for this {what} at reg = {float(reg):.3g} "
      f"(eps * kappa / min(1 - h) = {float(bound):.2g} > {F32_TOL:g}): pass float64 inputs "
      "(dtype=np.float64 when streaming) or a larger reg.")


# ----------------------------------------------------------------------------------------
# Losses. Per sample: f [n, c], y [n, c] -> [n].
# ----------------------------------------------------------------------------------------


def per_sample_loss(loss: str, f, y, temperature):
  """'mse': ||f - y||^2 summed over outputs; 'ce': -<y, log softmax(f / T)>."""
  if loss == "mse":
    return jnp.sum((f - y) ** 2, axis=-1)
  if loss == "ce":
    return -jnp.sum(y * jax.nn.log_softmax(f / temperature, axis=-1), axis=-1)
  raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")


def mean_loss(loss, preds, targets, mask, temperature):
  return jnp.sum(mask * per_sample_loss(loss, preds, targets, temperature)) / jnp.sum(mask)


def check_outer(outer) -> None:
  if outer not in OUTERS:
    raise ValueError(f"outer must be one of {OUTERS}, got {outer!r}.")


def outer_mask(weights, mask, outer: str):
  """The weights of the outer mean: the eval mask ("mean"), or weights * mask ("weighted")."""
  check_outer(outer)
  return mask * weights if outer == "weighted" else mask


def self_term(mask, per, value, denom):
  """The weighted outer mean's own-sample term of dL/da_k: m_k (l_k - L) / sum_i a_i m_i."""
  return mask * (per - value) / denom


def loss_and_grad(xp, loss: str, preds, targets, temperature):
  """Per-sample loss [n] and its gradient in the prediction [n, c]; xp = numpy or jnp."""
  if loss == "mse":
    diff = preds - targets
    return xp.sum(diff * diff, axis=1), 2.0 * diff
  logits = preds / temperature
  logits = logits - xp.max(logits, axis=1, keepdims=True)
  log_p = logits - xp.log(xp.sum(xp.exp(logits), axis=1, keepdims=True))
  per = -xp.sum(targets * log_p, axis=1)
  grad = (xp.exp(log_p) * xp.sum(targets, axis=1, keepdims=True) - targets) / temperature
  return per, grad


# ----------------------------------------------------------------------------------------
# The value-and-gradient tail, shared by every backend and the streamed passes.
# ----------------------------------------------------------------------------------------


def sample_terms(xp, err, one_minus_h, targets, mask, denom, temperature, loss: str,
                 with_grad: bool = True):
  """(value part, G~ [n, c], u [n], per-sample losses [n]) from the LOO errors e = f_loo - y
  of some samples.

  `mask` holds the outer mean's weights (`outer_mask`); `denom` is their sum over the whole
  set (so block parts add up).
  """
  per, g = loss_and_grad(xp, loss, targets + err, targets, temperature)
  value = xp.sum(mask * per) / denom
  if not with_grad:
    return value, None, None, per
  g = g * (mask / denom)[:, None]
  return value, g / one_minus_h[:, None], xp.sum(g * err, axis=1) / one_minus_h, per


def gradient(xp, resid, s_g_tilde, u, s_diag, s_sq_au):
  """dL/da_k = <r_k, (S G~)_k> + u_k S_kk - sum_i a_i u_i S_ik^2."""
  return xp.sum(resid * s_g_tilde, axis=1) + u * s_diag - s_sq_au


def value_and_grad_tail(xp, fitted, one_minus_h, s_diag, weights, targets, mask,
                        temperature, loss: str, with_grad: bool,
                        apply_s: Optional[Callable] = None,
                        apply_s_sq: Optional[Callable] = None, err=None,
                        outer: str = "mean"):
  """(L_loo, dL/da or None) from the hat-matrix quantities of any form and backend.

  apply_s(v) = S v [n, c] and apply_s_sq(w) = sum_i w_i S_ik^2 [n]; `err` (f_loo - y), when
  the caller has a more accurate one, replaces (Yhat - y) / (1 - h). `outer`: "mean" or
  "weighted" (`OUTERS`).
  """
  if err is None:
    err = (fitted - targets) / one_minus_h[:, None]
  m_out = outer_mask(weights, mask, outer)
  denom = xp.sum(m_out)
  value, g_tilde, u, per = sample_terms(xp, err, one_minus_h, targets, m_out, denom,
                                        temperature, loss, with_grad)
  if not with_grad:
    return value, None
  grad = gradient(xp, targets - fitted, apply_s(g_tilde), u, s_diag, apply_s_sq(weights * u))
  if outer == "weighted":
    grad = grad + self_term(mask, per, value, denom)
  return value, grad


# ----------------------------------------------------------------------------------------
# Reference closed form (autodiff-safe in every input). `form` is static:
def choose_form(features, kernel, n: int) -> str:
  """The form every entry point solves in: "primal" (features, d <= n), "gram_dual"
  (features, d > n: through K = Z Z^T) or "dual" (kernel)."""
  if features is None:
    return "dual"
  return "gram_dual" if np.shape(features)[1] > n else "primal"


# "primal" (x = features), "dual" (x = kernel), "gram_dual" (x = features, d > n).
# ----------------------------------------------------------------------------------------


def primal_b(weights, features, reg):
  """B = Z L^-T with L L^T = Z^T A Z + reg I, so that S = B B^T.  [n, d]."""
  d = features.shape[1]
  gram = dot((features * weights[:, None]).T, features) + reg * jnp.eye(d, dtype=features.dtype)
  chol = jnp.linalg.cholesky(gram)
  return lax.linalg.triangular_solve(chol, features, left_side=False, lower=True,
                                     transpose_a=True)


def dual_s_reference(weights, kernel, reg):
  """S = K (reg I + A K)^-1 = (reg I + K A)^-1 K by an LU solve: smooth in every input."""
  n = kernel.shape[0]
  s = jnp.linalg.solve(reg * jnp.eye(n, dtype=kernel.dtype) + kernel * weights[None, :], kernel)
  return 0.5 * (s + s.T)


def as_kernel(x, form):
  return dot(x, x.T) if form == "gram_dual" else x


def loo_predictions_impl(weights, targets, x, reg, form):
  ay = weights[:, None] * targets
  if form == "primal":
    b = primal_b(weights, x, reg)
    fitted, s_diag = dot(b, dot(b.T, ay)), jnp.sum(b * b, axis=1)
  else:
    s = dual_s_reference(weights, as_kernel(x, form), reg)
    fitted, s_diag = dot(s, ay), jnp.diagonal(s)
  h = weights * s_diag
  return (fitted - h[:, None] * targets) / (1.0 - h)[:, None]


def loo_loss_impl(weights, targets, x, reg, mask, temperature, form, loss, outer="mean"):
  preds = loo_predictions_impl(weights, targets, x, reg, form)
  return mean_loss(loss, preds, targets, outer_mask(weights, mask, outer), temperature)


def reference_loo_loss(weights, targets, *, features=None, kernel=None, reg, loss="mse",
                       eval_mask=None, temperature=1.0, outer="mean"):
  """The LOO loss by the plain closed form: pure jnp, differentiable in every input by
  autodiff, no validation and no fast path. An oracle for tests and the `jax.grad`
  contender of the benchmarks; use `diva_jax.loo_loss` otherwise. `outer="weighted"`
  weights the outer mean by the sample weights (autodiff then gives the own-sample term).

  Form: primal for features [n, d] with d <= n, the dual through K = Z Z^T for d > n, the
  dual for kernel [n, n].
  """
  from diva_jax.loo import checks as _checks  # (loo.checks imports this module)
  _checks.check_one_of(features, kernel)
  x = features if features is not None else kernel
  n = jnp.shape(weights)[0]
  form = choose_form(features, kernel, n)
  mask = jnp.ones((n,), jnp.result_type(x)) if eval_mask is None else eval_mask
  return loo_loss_impl(weights, targets, x, reg, mask, temperature, form, loss, outer)
