"""The XLA backend: LOO value and explicit gradient as jitted jnp (GPU, TPU, meshes, traces).

Computes only the hat-matrix products; the value-and-gradient formula is
`diva_jax.loo.closed_form.value_and_grad_tail`. `diva_jax.loo.backends.host` is the same for SciPy's BLAS.

float32 guard. The dual forms (kernel, or features with d > n) nearly interpolate at small
reg and lose every digit in float32 (docs/math.md, "the interpolating regime"); they run in
float64 whenever float64 is available at trace time (the public functions trace under
`jax.enable_x64`). The primal form stays in float32 while it is accurate: a cheap bound
eps * kappa / min(1 - h), with kappa >= the squared ratio of the Cholesky factor's extreme
diagonal entries, decides, and when it exceeds `F32_TOL` the computation is redone in float64
(or, with float64 unavailable, returns NaN, which the public boundary turns into an error):
never a silently wrong number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from diva_jax.loo import closed_form as cf

__all__ = ["value_and_grad", "F32_TOL"]

F32_TOL = cf.F32_TOL


def _x64() -> bool:
  return bool(jax.config.jax_enable_x64)


def _primal(weights, targets, x, reg, mask, temperature, loss, with_grad, outer):
  """(value, grad or None, accuracy bound) of the primal form."""
  d = x.shape[1]
  w_pos = jnp.maximum(weights, 0.0)
  # Weights < 0 (only under a user's jit, e.g. finite differences) keep the signed product.
  gram = cf.dot((x * weights[:, None]).T, x) + reg * jnp.eye(d, dtype=x.dtype)
  chol = jnp.linalg.cholesky(gram)
  b = lax.linalg.triangular_solve(chol, x, left_side=False, lower=True, transpose_a=True)
  s_diag = jnp.sum(b * b, axis=1)
  apply_s = lambda v: cf.dot(b, cf.dot(b.T, v))
  fitted = apply_s(weights[:, None] * targets)
  one_minus_h = 1.0 - weights * s_diag
  apply_s_sq = lambda w: jnp.sum(cf.dot(b, cf.dot((b * w[:, None]).T, b)) * b, axis=1)
  value, grad = cf.value_and_grad_tail(jnp, fitted, one_minus_h, s_diag, weights, targets,
                                       mask, temperature, loss, with_grad, apply_s, apply_s_sq,
                                       outer=outer)
  return value, grad, cf.f32_bound(jnp, cf.chol_kappa(jnp, jnp.diagonal(chol)), w_pos,
                                    one_minus_h)


def _dual(weights, targets, x, reg, mask, temperature, loss, with_grad, form, outer):
  kernel = cf.as_kernel(x, form)
  n = kernel.shape[0]

  def fast():  # weights >= 0: M = reg I + A^1/2 K A^1/2 = L L^T, S = (K - V^T V) / reg
    sa = jnp.sqrt(jnp.maximum(weights, 0.0))
    m = reg * jnp.eye(n, dtype=kernel.dtype) + sa[:, None] * kernel * sa[None, :]
    chol = jnp.linalg.cholesky(m)
    v = lax.linalg.triangular_solve(chol, sa[:, None] * kernel, left_side=True, lower=True)
    s = (kernel - cf.dot(v.T, v)) / reg
    return 0.5 * (s + s.T)

  # Negative weights (only under a user's jit): the sqrt-free reference form.
  s = lax.cond(jnp.all(weights >= 0), fast,
               lambda: cf.dual_s_reference(weights, kernel, reg))
  s_diag = jnp.diagonal(s)
  apply_s = lambda v: cf.dot(s, v)
  fitted = apply_s(weights[:, None] * targets)
  one_minus_h = 1.0 - weights * s_diag
  value, grad = cf.value_and_grad_tail(
      jnp, fitted, one_minus_h, s_diag, weights, targets, mask, temperature, loss, with_grad,
      apply_s, lambda w: cf.dot(s * s, w), outer=outer)
  min_omh = jnp.min(jnp.where(weights > 0, one_minus_h, 1.0))
  # kappa(M) <= 1 + ||A^1/2 K A^1/2||_2 / reg, and the spectral norm is at most the infinity
  # norm max_i sum_j sqrt(a_i) |K_ij| sqrt(a_j) (symmetric matrix).
  sa = jnp.sqrt(jnp.maximum(weights, 0.0))
  norm = jnp.max(sa * cf.dot(jnp.abs(kernel), sa))
  return value, grad, jnp.finfo(x.dtype).eps * (1.0 + norm / reg) / min_omh


def _run(args, form, loss, with_grad, outer):
  if form == "primal":
    return _primal(*args, loss, with_grad, outer)
  return _dual(*args, loss, with_grad, form, outer)


def value_and_grad(weights, targets, x, reg, mask, temperature, form: str, loss: str,
                   with_grad: bool, outer: str = "mean"):
  """(value, grad) (grad None unless `with_grad`) in x's dtype, guarded in float32."""
  args = (weights, targets, x, reg, mask, temperature)
  dtype = x.dtype
  if dtype != jnp.float32:
    value, grad, _ = _run(args, form, loss, with_grad, outer)
    return value, grad
  up = lambda: tuple(jnp.asarray(a, jnp.float64) for a in args)
  down = lambda out: (out[0].astype(dtype), None if out[1] is None else out[1].astype(dtype))
  if form != "primal" and _x64():
    return down(_run(up(), form, loss, with_grad, outer))
  value, grad, bound = _run(args, form, loss, with_grad, outer)
  ok = bound <= F32_TOL
  if not _x64():
    nan = jnp.asarray(jnp.nan, dtype)
    return (jnp.where(ok, value, nan),
            None if grad is None else jnp.where(ok, grad, nan))

  def redo():
    return down(_run(up(), form, loss, with_grad, outer)[:2])

  if grad is None:
    return lax.cond(ok, lambda: value, lambda: redo()[0]), None
  return lax.cond(ok, lambda: (value, grad), redo)
