"""The streamed primal form's three passes on host blocks (SciPy BLAS), for one CPU device.

The driver is `diva_jax.loo.streaming.driver`; `diva_jax.loo.streaming.xla` has the same passes for XLA.
Per-sample terms come from `diva_jax.loo.closed_form.sample_terms` (the formula written once).
"""

from __future__ import annotations

import numpy as np

from diva_jax.loo.backends import host as _host
from diva_jax.loo import closed_form as cf


def stream_pass1(z, a, y, gram, zay, buf=None):
  """Adds a block's Z_b^T A_b Z_b (upper triangle, by ?syrk) to `gram` [d, d] (Fortran-
  ordered, in place) and returns zay + Z_b^T A_b Y_b. A non-finite feature makes that [d, c]
  product non-finite (inf * 0 is NaN), so checking it checks the block. `buf`: scratch as in
  `gram_upper`."""
  with np.errstate(all="ignore"):  # non-finite features: reported by the caller
    _host.gram_upper(z, np.sqrt(a), out=gram, buf=buf)
    return zay + _host.mm(z.T, a[:, None] * y)


def stream_solve(gram, zay, reg):
  """(U, C = (G + reg I)^-1, W = C Z^T A Y) with U^T U = G + reg I (upper, Fortran-ordered);
  None when the factorisation fails. `gram` holds G's upper triangle."""
  d = gram.shape[0]
  _, trsm, _, potrf = _host._blas_fns(gram.dtype)
  g = np.array(gram, order="F")
  g[np.diag_indices(d)] += reg
  chol, info = potrf(g, lower=0, clean=1, overwrite_a=1)
  if info != 0:
    return None
  uinv_t = trsm(1.0, chol, np.eye(d, dtype=g.dtype), side=0, lower=0, trans_a=1)  # U^-T
  c_inv = _host.mm(uinv_t.T, uinv_t)
  return chol, c_inv, _host.mm(c_inv, zay)


def stream_pass2(z, a, y, m, chol, coef, temperature, denom, loss, m_acc, buf=None,
                 with_preds=False):
  """Per-sample quantities of a block; adds its part of M = Z^T diag(a u) Z to m_acc (upper
  triangle, in place, a ?syrk per sign of a u) and returns (value part, Z_b^T G~_b, S_kk,
  u, r = Y - Yhat, LOO predictions or None, per-sample LOO losses). `m` holds the outer
  mean's weights (`closed_form.outer_mask`), `denom` their sum over all rows.

  S_kk = ||U^-T z_k||^2 by one ?trsm (n d^2 flops for the block, half of z_k^T C z_k by
  GEMM); the per-sample terms by `closed_form.sample_terms`.
  """
  trsm = _host._blas_fns(z.dtype)[1]
  with np.errstate(all="ignore"):
    bt = trsm(1.0, chol, z.T, side=0, lower=0, trans_a=1)  # U^-T Z_b^T  [d, k]
    s_diag = np.einsum("jk,jk->k", bt, bt)
    del bt
    e = _host.mm_c(z, coef)  # Yhat [k, c]
    e -= y  # Yhat - y
    one_minus_h = 1.0 - a * s_diag
    err = e / one_minus_h[:, None]  # f_loo - y
    value, g_tilde, u, per = cf.sample_terms(np, err, one_minus_h, y, m, denom, temperature,
                                             loss)
    preds = y + err if with_preds else None
    _host.signed_gram_upper_t(z.T, a * u, out=m_acc, buf=buf)
    ztg = _host.mm(z.T, g_tilde)
    np.negative(e, out=e)  # r = y - Yhat
    return value, ztg, s_diag, u, e, preds, per


def stream_grad_stage(c_inv, m_upper, ztg):
  """(V, v): V = Q = C M C's upper triangle with its diagonal halved (for
  `_host.quadratic_forms_t(..., halved=True)`), v = C Z^T G~."""
  m_full = np.triu(m_upper) + np.triu(m_upper, 1).T
  return (_host.halve_diagonal(np.triu(_host.mm(_host.mm(c_inv, m_full), c_inv))),
          _host.mm(c_inv, ztg))


def stream_pass3(z, resid, s_diag, u, q_halved, v):
  """dL/da of a block: <r_k, z_k^T v> + u_k S_kk - z_k^T Q z_k (?trmm on Q's triangle)."""
  return cf.gradient(np, resid, _host.mm_c(z, v), u, s_diag,
                     _host.quadratic_forms_t(z.T, q_halved, halved=True))


