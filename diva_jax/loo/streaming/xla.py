"""The streamed primal form's three passes as jitted XLA (GPU, TPU, rows sharded on a mesh).

The driver is `diva_jax.loo.streaming.driver`; `diva_jax.loo.streaming.host` has the same passes in SciPy's
BLAS. Every block has the same shape (the last one is zero-padded with zero weight), so each
pass compiles once. Per-sample terms come from `diva_jax.loo.closed_form.sample_terms`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diva_jax.loo import closed_form as cf

__all__ = ["pass1", "solve_stage", "pass2", "grad_stage", "pass3"]


@jax.jit
def pass1(z, a, y):
  """(Z_b^T A_b Z_b, Z_b^T A_b Y_b)."""
  za = z * a[:, None]
  return cf.dot(za.T, z), cf.dot(za.T, y)


@jax.jit
def solve_stage(gram, zay, reg):
  """(C = (G + reg I)^-1, W = C Z^T A Y)."""
  d = gram.shape[0]
  chol = jnp.linalg.cholesky(gram + reg * jnp.eye(d, dtype=gram.dtype))
  c_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=gram.dtype))
  c_inv = 0.5 * (c_inv + c_inv.T)
  return c_inv, cf.dot(c_inv, zay)


@jax.jit(static_argnames=("loss",))
def pass2(z, a, y, m, c_inv, coef, temperature, denom, loss):
  """(value part, Z_b^T diag(a u) Z_b, Z_b^T G~_b, S_kk, u, r = Y - Yhat, LOO predictions,
  per-sample LOO losses); `m` holds the outer mean's weights, `denom` their total."""
  s_diag = jnp.sum(cf.dot(z, c_inv) * z, axis=1)
  fitted = cf.dot(z, coef)
  one_minus_h = 1.0 - a * s_diag
  err = (fitted - y) / one_minus_h[:, None]
  value, g_tilde, u, per = cf.sample_terms(jnp, err, one_minus_h, y, m, denom, temperature,
                                           loss)
  zau = z * (a * u)[:, None]
  return value, cf.dot(zau.T, z), cf.dot(z.T, g_tilde), s_diag, u, y - fitted, y + err, per


@jax.jit
def grad_stage(c_inv, m, ztg):
  """(Q = C M C, v = C Z^T G~)."""
  return cf.dot(c_inv, cf.dot(m, c_inv)), cf.dot(c_inv, ztg)


@jax.jit
def pass3(z, resid, s_diag, u, q, v):
  """dL/da of a block."""
  return cf.gradient(jnp, resid, cf.dot(z, v), u, s_diag, jnp.sum(cf.dot(z, q) * z, axis=1))
