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
from scipy.linalg import lapack as _lapack


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


def _blas_fns(dtype):
  """(syrk, trsm, trmm, potrf) of SciPy's BLAS/LAPACK for float32 or float64."""
  p = "d" if dtype == np.float64 else "s"
  return (getattr(_sblas, p + "syrk"), getattr(_sblas, p + "trsm"), getattr(_sblas, p + "trmm"),
          getattr(_lapack, p + "potrf"))


def block_rows(d: int, itemsize: int) -> int:
  """Rows per block of the blocked host passes: ~8 MiB of [rows, d], so that temporaries
  stay below glibc's mmap threshold (heap-reused, no fresh page faults per call)."""
  return max(64, (8 << 20) // max(1, d * itemsize))


def gram_upper(x, scale=None, block=None, out=None, alpha=1.0):
  """Upper triangle of X^T diag(scale^2) X (+ out), by ?syrk over row blocks of C-ordered X
  [n, d], Fortran-ordered [d, d] (the lower triangle is not referenced). The scaled rows go
  through one reused block buffer: no scaled copy of the whole X is made."""
  n, d = x.shape
  syrk = _blas_fns(x.dtype)[0]
  block = min(n, block or block_rows(d, x.dtype.itemsize))
  c = np.zeros((d, d), x.dtype, order="F") if out is None else out
  buf = None if scale is None else np.empty((block, d), x.dtype)
  for s in range(0, n, block):
    xb = x[s:s + block]
    if scale is not None:
      xb = np.multiply(xb, scale[s:s + block, None], out=buf[:xb.shape[0]])
    # syrk on the Fortran-ordered xb^T ([d, k], no copy) with trans=0: xb^T xb.
    c = syrk(alpha, xb.T, beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
  return c


def signed_gram_upper_t(bt, w, block=None):
  """Upper triangle of B^T diag(w) B for B^T = bt [d, n] (Fortran-ordered) and any real w:
  symmetric rank-k updates over the columns with w > 0 (alpha 1) and with w < 0 (alpha -1),
  half a GEMM's flops in all where the product B^T (diag(w) B) is a full GEMM."""
  d, n = bt.shape
  syrk = _blas_fns(bt.dtype)[0]
  block = min(n, block or block_rows(d, bt.dtype.itemsize))
  root = np.sqrt(np.abs(w))
  # Columns with w > 0 first, then w < 0 (w = 0 columns contribute nothing and are dropped).
  order = np.argsort(np.where(w > 0, 0, np.where(w < 0, 1, 2)), kind="stable")
  n_pos, n_nz = int(np.sum(w > 0)), int(np.sum(w != 0))
  identity = n_pos == n
  c = np.zeros((d, d), bt.dtype, order="F")
  buf = np.empty((block, d), bt.dtype).T  # a Fortran-ordered [d, block] view
  for s in range(0, n_nz, block):
    e = min(s + block, n_nz)
    cols = slice(s, e) if identity else order[s:e]
    blk = buf[:, :e - s]
    if identity:
      np.multiply(bt[:, cols], root[None, cols], out=blk)
    else:
      np.take(bt, cols, axis=1, out=blk)
      blk *= root[None, cols]
    split = min(max(n_pos - s, 0), e - s)  # columns [0, split) have w > 0
    if split:
      c = syrk(1.0, blk[:, :split], beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
    if split < e - s:
      c = syrk(-1.0, blk[:, split:], beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
  return c


def quadratic_forms_t(bt, upper, block=None):
  """x_k^T N x_k for every column x_k of bt [d, n], N symmetric given by its upper triangle
  (Fortran-ordered; overwritten).

  x^T N x = 2 x^T V x with V the upper triangle of N and its diagonal halved, so a
  triangular product (?trmm, half a GEMM's flops) replaces the GEMM X N. Rounding: of the
  order of eps sum_jk |x_j| |N_jk| |x_k|, as for the GEMM.
  """
  d, n = bt.shape
  trmm = _blas_fns(bt.dtype)[2]
  block = block or block_rows(d, bt.dtype.itemsize)
  upper[np.diag_indices(d)] *= 0.5
  out = np.empty(n, bt.dtype)
  for s in range(0, n, block):
    xb = bt[:, s:s + block]
    t = trmm(2.0, upper, xb, side=0, lower=0, trans_a=1)  # 2 V^T X_b  [d, k]
    out[s:s + block] = np.einsum("jk,jk->k", t, xb)
  return out


def primal_factor(weights, features, reg):
  """(U, B^T): upper Cholesky factor U^T U = Z^T A Z + reg I [d, d], and B^T = U^-T Z^T
  [d, n] (Fortran-ordered), so that the hat matrix is S = B B^T. None when the
  factorisation fails."""
  syrk, trsm, _, potrf = _blas_fns(features.dtype)
  d = features.shape[1]
  if np.all(weights >= 0):
    gram = gram_upper(features, np.sqrt(weights))
  else:  # only reachable under a user's jit (no boundary checks there)
    gram = np.asfortranarray((features * weights[:, None]).T @ features)
  gram[np.diag_indices(d)] += reg
  chol, info = potrf(gram, lower=0, clean=1, overwrite_a=1)
  if info != 0:
    return None
  # B^T = U^-T Z^T: Z^T of a C-ordered Z is Fortran-ordered, so trsm copies it once.
  return chol, trsm(1.0, chol, features.T, side=0, lower=0, trans_a=1)


def primal_value_and_grad(weights, targets, features, reg, mask, temperature, loss: str,
                          with_grad: bool):
  """(value, gradient [n]) or (value, None); the arguments as in `diva_jax.loo`.

  ~4 n d^2 flops for value and gradient, all in symmetric or triangular BLAS: Z^T A Z
  (syrk), B = Z L^-T (trsm), N = B^T diag(a u) B (syrk over each sign) and b_k^T N b_k
  (trmm on N's triangle). The value alone is the first two (~2 n d^2).
  """
  z = np.asarray(features)
  dtype = z.dtype
  n = z.shape[0]
  trsm = _blas_fns(dtype)[1]
  weights, targets, mask = (np.asarray(v, dtype) for v in (weights, targets, mask))
  reg, temperature = dtype.type(reg), dtype.type(temperature)
  with np.errstate(all="ignore"):  # a failed factorisation surfaces as NaN, checked later
    factor = primal_factor(weights, z, reg)
    if factor is None:
      nan = np.full((), np.nan, dtype)
      return nan, (np.full(n, np.nan, dtype) if with_grad else None)
    chol, bt = factor
    coef = trsm(1.0, chol, z.T @ (weights[:, None] * targets), side=0, lower=0, trans_a=1)
    s_diag = np.einsum("jk,jk->k", bt, bt)  # S_kk = ||b_k||^2
    fitted = bt.T @ coef  # S A Y = B (B^T A Y)
    h = weights * s_diag
    return _value_and_grad(
        fitted, h, 1.0 - h, s_diag, weights, targets, mask, temperature, loss, with_grad,
        apply_s=lambda v: bt.T @ (bt @ v),
        apply_s_sq=lambda w: quadratic_forms_t(bt, signed_gram_upper_t(bt, w)))


def _value_and_grad(fitted, h, one_minus_h, s_diag, weights, targets, mask, temperature,
                    loss, with_grad, apply_s, apply_s_sq):
  """The LOO loss and its explicit gradient from the hat-matrix quantities of either form.

  apply_s(v) = S v and apply_s_sq(w) = sum_i w_i S_ik^2 (the module docstring of
  `diva_jax.loo` has the formula).
  """
  dtype = fitted.dtype
  preds = (fitted - h[:, None] * targets) / one_minus_h[:, None]
  per, g = loss_and_grad(loss, preds, targets, temperature)
  denom = mask.sum()
  value = np.asarray(np.sum(mask * per) / denom, dtype)
  if not with_grad:
    return value, None
  g = g * (mask / denom)[:, None]
  u = np.sum(g * (preds - targets), axis=1) / one_minus_h
  grad = (np.sum((targets - fitted) * apply_s(g / one_minus_h[:, None]), axis=1)
          + u * s_diag - apply_s_sq(weights * u))
  return value, np.asarray(grad, dtype)


# ----------------------------------------------------------------------------------------
# The three passes of the streamed primal form (diva_jax.streaming), on host blocks.
# ----------------------------------------------------------------------------------------


def stream_pass1(z, a, y):
  """(Z_b^T A_b Z_b, Z_b^T A_b Y_b) of one block."""
  return _syrk(z * np.sqrt(a)[:, None]), (z * a[:, None]).T @ y


def stream_solve(gram, zay, reg):
  """(C = (G + reg I)^-1, W = C Z^T A Y); NaN when the factorisation fails."""
  d = gram.shape[0]
  g = gram.copy()
  g[np.diag_indices(d)] += reg
  try:
    chol = np.linalg.cholesky(g)
  except np.linalg.LinAlgError:
    return np.full_like(g, np.nan), np.full_like(zay, np.nan)
  fn = _sblas.dtrsm if g.dtype == np.float64 else _sblas.strsm
  linv = fn(1.0, chol, np.eye(d, dtype=g.dtype), side=0, lower=1)  # L^-1
  c_inv = linv.T @ linv
  return c_inv, c_inv @ zay


def stream_pass2(z, a, y, m, c_inv, coef, temperature, denom, loss):
  """Per-sample quantities of a block and its parts of M = Z^T diag(a u) Z and Z^T G~."""
  with np.errstate(all="ignore"):
    s_diag = np.sum((z @ c_inv) * z, axis=1)
    fitted = z @ coef
    h = a * s_diag
    omh = 1.0 - h
    preds = (fitted - h[:, None] * y) / omh[:, None]
    per, g = loss_and_grad(loss, preds, y, temperature)
    value = np.sum(m * per) / denom
    g = g * (m / denom)[:, None]
    u = np.sum(g * (preds - y), axis=1) / omh
    w = a * u
    if loss == "mse":
      m_b = _syrk(z * np.sqrt(np.maximum(w, 0))[:, None])
    else:
      m_b = (z * w[:, None]).T @ z
    return value, m_b, z.T @ (g / omh[:, None]), s_diag, u, y - fitted, preds


def stream_pass3(z, resid, s_diag, u, q, v):
  """dL/da of a block: <r_k, z_k^T v> + u_k S_kk - z_k^T Q z_k."""
  return np.sum(resid * (z @ v), axis=1) + u * s_diag - np.sum((z @ q) * z, axis=1)


# ----------------------------------------------------------------------------------------
# Dual form (kernel [n, n]), in one host callback: one copy of K in, [n] out.
# ----------------------------------------------------------------------------------------


def dual_value_and_grad(weights, targets, kernel, reg, mask, temperature, loss: str,
                        with_grad: bool):
  """(value, gradient [n]) or (value, None) of the dual form, weights >= 0.

  With M = reg I + A^1/2 K A^1/2 = L L^T:
    * value (a Cholesky and a triangular inverse, ~2/3 n^3 flops): 1 - h_i = reg (M^-1)_ii
      and Yhat = K beta with beta = A^1/2 M^-1 A^1/2 Y, both exact for zero weights;
    * gradient: S = (K - V^T V) / reg with V = L^-1 A^1/2 K (one trsm, one syrk).
  """
  dtype = kernel.dtype
  kernel = np.asarray(kernel)
  weights, targets, mask = (np.asarray(v, dtype) for v in (weights, targets, mask))
  reg, temperature = dtype.type(reg), dtype.type(temperature)
  n = kernel.shape[0]
  nan = (np.full((), np.nan, dtype), np.full(n, np.nan, dtype) if with_grad else None)
  from scipy.linalg import lapack
  potrf = lapack.dpotrf if dtype == np.float64 else lapack.spotrf
  trtri = lapack.dtrtri if dtype == np.float64 else lapack.strtri
  with np.errstate(all="ignore"):
    sa = np.sqrt(np.maximum(weights, 0))
    m = sa[:, None] * kernel * sa[None, :]
    m[np.diag_indices(n)] += reg
    chol, info = potrf(m, lower=1, clean=1, overwrite_a=1)
    if info != 0:
      return nan
    ay = sa[:, None] * targets
    if not with_grad:
      linv, info = trtri(chol, lower=1)
      if info != 0:
        return nan
      m_inv_diag = np.sum(linv * linv, axis=0)  # (M^-1)_ii = sum_k (L^-1)_ki^2
      beta = sa[:, None] * (linv.T @ (linv @ ay))
      fitted = kernel @ beta
      one_minus_h = reg * m_inv_diag
      h = 1.0 - one_minus_h
      s_diag = None
    else:
      fn = _sblas.dtrsm if dtype == np.float64 else _sblas.strsm
      v = fn(1.0, chol, sa[:, None] * kernel, side=0, lower=1)  # L^-1 A^1/2 K
      s = kernel - _syrk(v)
      s /= reg
      s_diag = np.diagonal(s).copy()
      fitted = s @ (weights[:, None] * targets)
      h = weights * s_diag
      one_minus_h = 1.0 - h
    if not with_grad:
      return _value_and_grad(fitted, h, one_minus_h, None, weights, targets, mask,
                             temperature, loss, False, None, None)
    return _value_and_grad(fitted, h, one_minus_h, s_diag, weights, targets, mask,
                           temperature, loss, True, apply_s=lambda g: s @ g,
                           apply_s_sq=lambda w: (s * s) @ w)
