"""The primal LOO value and explicit gradient in NumPy/SciPy, for the CPU backend.

Same maths, line for line, as `diva_jax.loo._loo_value_and_grad` (primal form); the tests
check that both agree. Why a host version: XLA:CPU's dense dot is 2-3x slower than the
OpenBLAS that NumPy ships (jax-ml/jax#3832) and has no symmetric rank-k update, and every
`pure_callback` crossing copies its arrays, so the whole computation runs in one callback
(one copy of Z in, the [n] gradient out). `diva_jax.loo` dispatches here through
`jax.lax.platform_dependent` on CPU only; GPU and TPU run the XLA version.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _sblas


def _syrk(x):
  """x^T x, full and exactly symmetric, by ?syrk (half a GEMM's flops)."""
  fn = _sblas.dsyrk if x.dtype == np.float64 else _sblas.ssyrk
  upper = fn(1.0, x.T, trans=0, lower=0)  # x^T of a C-ordered x is Fortran-ordered: no copy
  return np.triu(upper) + np.triu(upper, 1).T


def _trsm_right_lower_t(chol, z):
  """Z L^-T for lower-triangular L."""
  fn = _sblas.dtrsm if z.dtype == np.float64 else _sblas.strsm
  return np.ascontiguousarray(fn(1.0, chol, z.T, side=0, lower=1, trans_a=0, diag=0).T)


def loss_and_grad(loss, preds, targets, temperature):
  """Per-sample loss [n] and its gradient in the prediction [n, c]."""
  if loss == "mse":
    diff = preds - targets
    return np.sum(diff * diff, axis=1), 2.0 * diff
  logits = preds / temperature
  logits = logits - logits.max(axis=1, keepdims=True)
  logz = np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  log_p = logits - logz
  per = -np.sum(targets * log_p, axis=1)
  grad = (np.exp(log_p) * targets.sum(axis=1, keepdims=True) - targets) / temperature
  return per, grad


def primal_b(weights, features, reg):
  """B = Z L^-T with L L^T = Z^T A Z + reg I."""
  d = features.shape[1]
  if np.all(weights >= 0):
    gram = _syrk(features * np.sqrt(weights)[:, None].astype(features.dtype))
  else:  # only reachable under a user's jit (no boundary checks there)
    gram = (features * weights[:, None]).T @ features
  gram[np.diag_indices(d)] += reg
  chol = np.linalg.cholesky(gram)
  return _trsm_right_lower_t(chol, features)


def primal_value_and_grad(weights, targets, features, reg, mask, temperature, loss: str,
                          with_grad: bool):
  """(value, gradient [n]) or (value, None); the arguments as in `diva_jax.loo`."""
  dtype = features.dtype
  weights, targets, mask = (np.asarray(v, dtype) for v in (weights, targets, mask))
  reg, temperature = dtype.type(reg), dtype.type(temperature)
  with np.errstate(all="ignore"):  # a failed factorisation surfaces as NaN, checked later
    try:
      b = primal_b(weights, np.asarray(features), reg)
    except np.linalg.LinAlgError:
      nan = np.full((), np.nan, dtype)
      return nan, (np.full(weights.shape, np.nan, dtype) if with_grad else None)
    s_diag = np.sum(b * b, axis=1)
    fitted = b @ (b.T @ (weights[:, None] * targets))
    h = weights * s_diag
    one_minus_h = 1.0 - h
    preds = (fitted - h[:, None] * targets) / one_minus_h[:, None]
    per, g = loss_and_grad(loss, preds, targets, temperature)
    denom = mask.sum()
    value = np.asarray(np.sum(mask * per) / denom, dtype)
    if not with_grad:
      return value, None
    g = g * (mask / denom)[:, None]
    resid = targets - fitted
    g_tilde = g / one_minus_h[:, None]
    u = np.sum(g * (preds - targets), axis=1) / one_minus_h
    w = weights * u
    if loss == "mse":  # w >= 0: N = B^T diag(w) B is a Gram matrix
      n_mat = _syrk(b * np.sqrt(np.maximum(w, 0))[:, None])
    else:
      n_mat = (b * w[:, None]).T @ b
    grad = (np.sum(resid * (b @ (b.T @ g_tilde)), axis=1) + u * s_diag
            - np.sum((b @ n_mat) * b, axis=1))
    return value, np.asarray(grad, dtype)
