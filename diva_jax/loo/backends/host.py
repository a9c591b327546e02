"""The host BLAS backend: LOO value and explicit gradient in NumPy/SciPy, for the CPU.

Computes only the hat-matrix products; the value-and-gradient formula is
`diva_jax.loo.closed_form.value_and_grad_tail`, shared with the XLA backend (`diva_jax.loo.backends.xla`)
and the streamed passes. `diva_jax.loo.backends.dispatch` decides which backend runs.

Why a host version: XLA:CPU's dense dot is 2-3x slower than OpenBLAS in float64
(jax-ml/jax#3832) and XLA has no symmetric rank-k update (?syrk) or triangular product
(?trmm), which halve the flops of Gram matrices and quadratic forms.

One BLAS library: every product here goes through SciPy's BLAS (`mm`, ?syrk, ?trsm, ?trmm),
never NumPy's `@` on large operands. NumPy's and SciPy's wheels each bundle their own
OpenBLAS with its own thread pool, and a pool's threads spin for a while after each call:
a SciPy call right after a NumPy GEMM ran 20-50% slower on 2 cores (snippet in BUILD.md).

float32: the dual forms (kernel, or features with d > n) run in float64 internally (docs/math.md,
"the interpolating regime": float32 keeps nothing there at small reg); the primal form stays
in float32 while the bound eps * kappa / min(1 - h) <= `F32_TOL` (kappa >= the squared ratio
of the Cholesky factor's extreme diagonal entries) and is redone in float64 otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _sblas
from scipy.linalg import lapack as _lapack

from diva_jax.loo import closed_form as cf

F32_TOL = cf.F32_TOL


def _fortran(a):
  """(A, trans) with A Fortran-ordered and op(A) = a, without a copy where possible."""
  if a.flags.f_contiguous:
    return a, 0
  if a.flags.c_contiguous:
    return a.T, 1
  return np.asfortranarray(a), 0


def mm(a, b):
  """a @ b for 2-D a, b by SciPy's ?gemm (Fortran-ordered result)."""
  gemm = _sblas.dgemm if np.result_type(a, b) == np.float64 else _sblas.sgemm
  (fa, ta), (fb, tb) = _fortran(a), _fortran(b)
  return gemm(1.0, fa, fb, trans_a=ta, trans_b=tb)


def mm_c(a, b):
  """a @ b by SciPy's ?gemm, C-ordered (computed as (b^T a^T)^T: no copy)."""
  return mm(b.T, a.T).T


def _syrk(x):
  """x^T x, full and exactly symmetric, by ?syrk (half a GEMM's flops)."""
  fn = _sblas.dsyrk if x.dtype == np.float64 else _sblas.ssyrk
  upper = fn(1.0, x.T, trans=0, lower=0)  # x^T of a C-ordered x is Fortran-ordered: no copy
  return np.triu(upper) + np.triu(upper, 1).T


def _blas_fns(dtype):
  """(syrk, trsm, trmm, potrf) of SciPy's BLAS/LAPACK for float32 or float64."""
  p = "d" if dtype == np.float64 else "s"
  return (getattr(_sblas, p + "syrk"), getattr(_sblas, p + "trsm"), getattr(_sblas, p + "trmm"),
          getattr(_lapack, p + "potrf"))


def block_rows(d: int, itemsize: int, mib: int = 64) -> int:
  """Rows per block of the blocked host passes: about `mib` MiB of [rows, d]. ?syrk's rate
  grows with the rows per update (measured for d = 1024, float32: 82 Gflop/s at 2,048 rows,
  108 at 32,768), so the rank-k updates take large blocks; ?trmm's rate is flat and takes
  small ones (less memory traffic for the products that follow)."""
  return max(64, (mib << 20) // max(1, d * itemsize))


def syrk_upper(x, c, alpha=1.0):
  """c += alpha X^T X on the upper triangle (?syrk, half a GEMM's flops), for X [k, d] with
  X^T Fortran-ordered (X C-ordered) and c [d, d] Fortran-ordered."""
  syrk = _blas_fns(x.dtype)[0]
  xt = x.T if x.T.flags.f_contiguous else np.asfortranarray(x.T)
  return syrk(alpha, xt, beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)


def gram_upper(x, scale=None, out=None, buf=None, alpha=1.0):
  """Upper triangle of X^T diag(scale^2) X (+ out), by `syrk_upper` over row blocks of
  C-ordered X [n, d], Fortran-ordered [d, d] (the lower triangle is not to be read). The
  scaled rows go through one block buffer (`buf`, C-ordered [rows, d], or a new one of
  ~64 MiB): no scaled copy of the whole X is made."""
  n, d = x.shape
  if scale is not None and buf is None:
    buf = np.empty((min(n, block_rows(d, x.dtype.itemsize)), d), x.dtype)
  block = n if buf is None else buf.shape[0]
  c = np.zeros((d, d), x.dtype, order="F") if out is None else out
  for s in range(0, n, block):
    xb = x[s:s + block]
    if scale is not None:
      xb = np.multiply(xb, scale[s:s + block, None], out=buf[:xb.shape[0]])
    c = syrk_upper(xb, c, alpha)
  return c


def signed_gram_upper_t(bt, w, out=None, buf=None):
  """Upper triangle of B^T diag(w) B for B^T = bt [d, n] (Fortran-ordered) and any real w:
  symmetric rank-k updates (`syrk_upper`) over the columns with w > 0 (alpha 1) and with
  w < 0 (alpha -1), half a GEMM's flops in all where the product B^T (diag(w) B) is a full
  GEMM. Accumulates into `out` (Fortran-ordered) when given; `buf` is a C-ordered [rows, d]
  scratch (default: a new one of ~64 MiB)."""
  d, n = bt.shape
  if buf is None:
    buf = np.empty((min(n, block_rows(d, bt.dtype.itemsize)), d), bt.dtype)
  block = buf.shape[0]
  b = bt.T  # C-ordered [n, d]
  root = np.sqrt(np.abs(w))
  n_pos, n_nz = int(np.sum(w > 0)), int(np.sum(w != 0))
  identity = n_pos == n
  # Otherwise rows with w > 0 first, then w < 0 (w = 0 rows contribute nothing, dropped).
  order = None if identity else np.argsort(np.where(w > 0, 0, np.where(w < 0, 1, 2)),
                                           kind="stable")
  c = np.zeros((d, d), bt.dtype, order="F") if out is None else out
  for s in range(0, n_nz, block):
    e = min(s + block, n_nz)
    rows = slice(s, e) if identity else order[s:e]
    blk = buf[:e - s]
    if identity:
      np.multiply(b[rows], root[rows, None], out=blk)
    else:
      np.take(b, rows, axis=0, out=blk)
      blk *= root[rows, None]
    split = min(max(n_pos - s, 0), e - s)  # rows [0, split) have w > 0
    if split:
      c = syrk_upper(blk[:split], c, 1.0)
    if split < e - s:
      c = syrk_upper(blk[split:], c, -1.0)
  return c


def halve_diagonal(upper):
  """V = upper triangle of N with its diagonal halved (a copy), for `quadratic_forms_t`."""
  v = np.array(upper, order="F")
  v[np.diag_indices(v.shape[0])] *= 0.5
  return v


def quadratic_forms_t(bt, upper, block=None, halved=False):
  """x_k^T N x_k for every column x_k of bt [d, n], N symmetric given by its upper triangle
  (Fortran-ordered; overwritten unless `halved`, which says it is `halve_diagonal(N)`).

  x^T N x = 2 x^T V x with V the upper triangle of N and its diagonal halved, so a
  triangular product (?trmm, half a GEMM's flops) replaces the GEMM X N. Rounding: of the
  order of eps sum_jk |x_j| |N_jk| |x_k|, as for the GEMM.
  """
  d, n = bt.shape
  trmm = _blas_fns(bt.dtype)[2]
  block = block or block_rows(d, bt.dtype.itemsize, mib=8)
  if not halved:
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
  _, trsm, _, potrf = _blas_fns(features.dtype)
  d = features.shape[1]
  if np.all(weights >= 0):
    gram = gram_upper(features, np.sqrt(weights))
  else:  # only reachable under a user's jit (no boundary checks there)
    gram = mm((features * weights[:, None]).T, features)
  gram[np.diag_indices(d)] += reg
  chol, info = potrf(gram, lower=0, clean=1, overwrite_a=1)
  if info != 0:
    return None
  # B^T = U^-T Z^T: Z^T of a C-ordered Z is Fortran-ordered, so trsm copies it once.
  return chol, trsm(1.0, chol, features.T, side=0, lower=0, trans_a=1)


def primal_value_and_grad(weights, targets, features, reg, mask, temperature, loss: str,
                          with_grad: bool, outer: str = "mean"):
  """(value, gradient [n] or None) of the primal form, in the features' dtype.

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

  def promoted():
    f64 = lambda a: np.asarray(a, np.float64)
    value, grad = primal_value_and_grad(f64(weights), f64(targets), f64(z), float(reg),
                                        f64(mask), float(temperature), loss, with_grad,
                                        outer)
    return value.astype(dtype), (None if grad is None else grad.astype(dtype))

  with np.errstate(all="ignore"):  # a failed factorisation surfaces as NaN, checked later
    factor = primal_factor(weights, z, reg)
    if factor is None:
      if dtype == np.float32:
        return promoted()
      return np.full((), np.nan, dtype), (np.full(n, np.nan, dtype) if with_grad else None)
    chol, bt = factor
    coef = trsm(1.0, chol, mm(z.T, weights[:, None] * targets), side=0, lower=0, trans_a=1)
    s_diag = np.einsum("jk,jk->k", bt, bt)  # S_kk = ||b_k||^2
    fitted = mm_c(bt.T, coef)  # S A Y = B (B^T A Y)
    one_minus_h = 1.0 - weights * s_diag
    if dtype == np.float32:
      kappa = cf.chol_kappa(np, np.diagonal(chol))
      if not cf.f32_bound(np, kappa, weights, one_minus_h) <= F32_TOL:
        return promoted()
    value, grad = cf.value_and_grad_tail(
        np, fitted, one_minus_h, s_diag, weights, targets, mask, temperature, loss, with_grad,
        apply_s=lambda v: mm_c(bt.T, mm(bt, v)),
        apply_s_sq=lambda w: quadratic_forms_t(bt, signed_gram_upper_t(bt, w)), outer=outer)
  return np.asarray(value, dtype), (None if grad is None else np.asarray(grad, dtype))


def dual_value_and_grad(weights, targets, kernel, reg, mask, temperature, loss: str,
                        with_grad: bool, gram: bool = False, outer: str = "mean"):
  """(value, gradient [n] or None) of the dual form, weights >= 0, computed in float64.

  `kernel` is K [n, n], or the features Z [n, d] when `gram` (K = Z Z^T by ?syrk). With
  M = reg I + A^1/2 K A^1/2 = L L^T:
    * value (a Cholesky and a triangular inverse, ~2/3 n^3 flops): 1 - h_i = reg (M^-1)_ii
      and Yhat = K beta with beta = A^1/2 M^-1 A^1/2 Y, both exact for zero weights;
    * gradient: S = (K - V^T V) / reg with V = L^-1 A^1/2 K (one trsm, one syrk).
  """
  out_dtype = np.asarray(kernel).dtype
  f64 = lambda a: np.asarray(a, np.float64)
  kernel = f64(kernel)
  if gram:
    kernel = _syrk(np.ascontiguousarray(kernel.T))
  weights, targets, mask = f64(weights), f64(targets), f64(mask)
  reg, temperature = float(reg), float(temperature)
  n = kernel.shape[0]
  nan = (np.full((), np.nan, out_dtype), np.full(n, np.nan, out_dtype) if with_grad else None)
  with np.errstate(all="ignore"):
    sa = np.sqrt(np.maximum(weights, 0))
    m = sa[:, None] * kernel * sa[None, :]
    m[np.diag_indices(n)] += reg
    chol, info = _lapack.dpotrf(m, lower=1, clean=1, overwrite_a=1)
    if info != 0:
      return nan
    if not with_grad:
      linv, info = _lapack.dtrtri(chol, lower=1)
      if info != 0:
        return nan
      beta = sa[:, None] * mm(linv.T, mm(linv, sa[:, None] * targets))
      value, grad = cf.value_and_grad_tail(
          np, mm_c(kernel, beta), reg * np.sum(linv * linv, axis=0), None, weights, targets,
          mask, temperature, loss, False, outer=outer)
    else:
      v = _sblas.dtrsm(1.0, chol, sa[:, None] * kernel, side=0, lower=1)  # L^-1 A^1/2 K
      s = kernel - _syrk(v)
      s /= reg
      s_diag = np.diagonal(s).copy()
      value, grad = cf.value_and_grad_tail(
          np, mm_c(s, weights[:, None] * targets), 1.0 - weights * s_diag, s_diag, weights,
          targets, mask, temperature, loss, True, apply_s=lambda g: mm_c(s, g),
          apply_s_sq=lambda w: mm(s * s, w[:, None])[:, 0], outer=outer)
  return np.asarray(value, out_dtype), (None if grad is None else np.asarray(grad, out_dtype))
