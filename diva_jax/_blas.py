"""Dense products for the LOO fast paths: the host's BLAS on CPU, XLA dots elsewhere.

XLA:CPU's dense dot runs at about half the rate of the OpenBLAS that NumPy and SciPy ship
(float64 most of all; jax-ml/jax#3832), and it has no symmetric rank-k update, so a Gram
matrix costs a full GEMM. On the CPU backend these helpers therefore call SciPy's BLAS
(`?syrk` for Gram matrices, `?trsm`, NumPy's `matmul`) through `jax.pure_callback`; on GPU
and TPU `jax.lax.platform_dependent` keeps the XLA dots. They are used only by the explicit
(non-differentiated) value-and-gradient paths; the reference closed form that autodiff
goes through uses plain XLA ops.

Set the environment variable DIVA_HOST_BLAS=0 to use XLA's dots on CPU too (e.g. for rows
sharded over several CPU devices, where a callback would gather them onto one).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.linalg import blas as _sblas

from diva_jax import _host

__all__ = ["enabled", "matmul", "gram", "trsm_right_lower_t", "trsm_left_lower"]

_HI = lax.Precision.HIGHEST


def enabled() -> bool:
  return os.environ.get("DIVA_HOST_BLAS", "1") != "0"


def _callback(host_fn, shape, dtype, *args):
  out = jax.ShapeDtypeStruct(shape, dtype)
  return jax.pure_callback(host_fn, out, *args, vmap_method="sequential")


def _dispatch(cpu_fn, xla_fn, *args):
  if not enabled():
    return xla_fn(*args)
  return lax.platform_dependent(*args, cpu=cpu_fn, default=xla_fn)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b for 2-D a [m, k], b [k, p]."""
  dtype = jnp.result_type(a, b)

  def host(a_, b_):  # SciPy's ?gemm: one OpenBLAS thread pool with ?syrk/?trsm (diva_jax._host)
    return _host.mm(np.asarray(a_, dtype), np.asarray(b_, dtype))

  cpu = lambda a_, b_: _callback(host, (a.shape[0], b.shape[1]), dtype, a_, b_)
  xla = lambda a_, b_: jnp.matmul(a_, b_, precision=_HI)
  return _dispatch(cpu, xla, a, b)


def _syrk_host(x):
  """x^T x (full symmetric) by ?syrk: half the flops of a GEMM."""
  x = np.asarray(x)
  fn = _sblas.dsyrk if x.dtype == np.float64 else _sblas.ssyrk
  # syrk on the C-ordered x^T (= a Fortran-ordered [d, n]) computes x^T x without a copy.
  upper = fn(1.0, x.T, trans=0, lower=0)
  return np.triu(upper) + np.triu(upper, 1).T


def gram(x: jax.Array) -> jax.Array:
  """x^T x  [d, d] for x [n, d] (symmetric rank-n update on CPU)."""
  cpu = lambda x_: _callback(_syrk_host, (x.shape[1], x.shape[1]), x.dtype, x_)
  xla = lambda x_: jnp.matmul(x_.T, x_, precision=_HI)
  return _dispatch(cpu, xla, x)


def _trsm_host(chol, z):
  chol, z = np.asarray(chol), np.asarray(z)
  fn = _sblas.dtrsm if z.dtype == np.float64 else _sblas.strsm
  # Solve X L^T = Z for X: on the transposes, L X^T = Z^T (left side, lower, no transpose);
  # Z^T in Fortran order is Z in C order, so no copy is made.
  xt = fn(1.0, chol, z.T, side=0, lower=1, trans_a=0, diag=0)
  return np.ascontiguousarray(xt.T)


def trsm_right_lower_t(chol: jax.Array, z: jax.Array) -> jax.Array:
  """Z L^-T for a lower-triangular L [d, d] and Z [n, d]."""
  cpu = lambda c_, z_: _callback(_trsm_host, z.shape, z.dtype, c_, z_)
  xla = lambda c_, z_: lax.linalg.triangular_solve(c_, z_, left_side=False, lower=True,
                                                   transpose_a=True)
  return _dispatch(cpu, xla, chol, z)


def _trsm_left_host(chol, b):
  chol, b = np.asarray(chol), np.asarray(b)
  fn = _sblas.dtrsm if b.dtype == np.float64 else _sblas.strsm
  return np.ascontiguousarray(fn(1.0, chol, b, side=0, lower=1, trans_a=0, diag=0))


def trsm_left_lower(chol: jax.Array, b: jax.Array) -> jax.Array:
  """L^-1 B for a lower-triangular L [n, n] and B [n, p]."""
  cpu = lambda c_, b_: _callback(_trsm_left_host, b.shape, b.dtype, c_, b_)
  xla = lambda c_, b_: lax.linalg.triangular_solve(c_, b_, left_side=True, lower=True)
  return _dispatch(cpu, xla, chol, b)
