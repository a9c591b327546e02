"""The default label-issue rule with the features read in row blocks: one factorisation.

`find_label_issues(labels, features=F)` comes here when F is a `.npy` path, an `np.memmap`, a
`diva_jax.loo.streaming` block source (`ArraySource`, `FunctionSource`, `npy_source`) or when
`block_size=` is given. The features are never held whole; three passes over the rows:

  pass 1:  G = Z^T Z (in float64), Z^T Y (class sums), then one
           eigendecomposition G = V diag(s) V^T (float64, d x d). It serves every reg:
           S(reg) = P diag(1 / (s + reg)) P^T with P = Z V, and the fit's degrees of freedom
           sum s / (s + reg) (the detection multiplier, `auto_reg_multiplier`).
  reg:     the exact-LOO optimum over `select_reg`'s grid, on P's rows of a fixed random
           subset of `reg_rows` samples (all of them when n <= reg_rows: then it is
           `select_reg` itself), each evaluated with the whole fit.
  pass 2:  per block P_b = Z_b V: the LOO predictions at reg (the class sums of the
           probabilities of the given labels: the confident joint's thresholds) and the
           derivative's per-sample terms at the detection reg; accumulated in the eigenbasis
           M = P^T diag(u) P, P^T G~ (d x d, d x c).
  pass 3:  per block again P_b: dL/da_k = <r_k, p_k^T v> + u_k S_kk - p_k^T Q p_k with
           Q = D M D, v = D P^T G~, D = diag(1 / (s + reg_det)); the LOO probabilities at reg
           again, for the confident joint's counts, the quality scores and suggestions.

Memory besides the source: O(d^2 + d c + block_size (d + c) + n) and, with
`return_probs=True` only, the [n, c] float32 LOO probabilities. Nothing [n, c] is float64.
The block products run in the compute dtype (float32 for float32 features); the float32
accuracy bound of `diva_jax.loo.closed_form` is checked after pass 2, and a failing float32
run is redone in float64 (passes 2 and 3 only) instead of returning a wrong number, and where
float64 fails it too (an interpolating fit: d >= n and a tiny reg, where only the in-memory
dual form is exact) the call is refused.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.curation import detect as detection
from diva_jax.loo import closed_form as cf
from diva_jax.loo import reg as reg_selection
from diva_jax.loo.streaming import driver as streaming

__all__ = ["is_streamed_source", "as_block_source", "streamed_label_issues"]


def is_streamed_source(features) -> bool:
  """True for what the streamed rule reads: a path, an np.memmap or a block source."""
  return (isinstance(features, (str, os.PathLike)) or isinstance(features, np.memmap)
          or hasattr(features, "read"))


def as_block_source(features):
  """A block source for `features` (a `.npy` path, an array or memmap, a block source), with
  its shape and dtype checked before any pass (one-line errors naming what came)."""
  if isinstance(features, (str, os.PathLike)):
    path = os.fspath(features)
    if not (os.path.isfile(path) and path.endswith(".npy")):
      raise ValueError(f"features: {path!r} is not an existing .npy file.")
    try:
      src = streaming.npy_source(path)
    except ValueError as e:
      raise ValueError(f"features: {e}") from None
  elif hasattr(features, "read"):
    src = features
  else:
    if np.ndim(features) != 2:
      raise ValueError(f"features must be [n, d], got shape {np.shape(features)}.")
    src = streaming.ArraySource(features)
  for attr in ("num_rows", "num_features", "dtype"):
    if not hasattr(src, attr):
      raise ValueError(f"features: a block source needs num_rows, num_features and dtype; "
                       f"{type(src).__name__} has no {attr}.")
  if not np.issubdtype(np.dtype(src.dtype), np.floating):
    raise ValueError(f"features must be floating point (float32 or float64), got dtype "
                     f"{np.dtype(src.dtype)}.")
  if int(src.num_rows) < 3 or int(src.num_features) < 1:
    raise ValueError(f"features must have at least 3 rows and 1 column, got "
                     f"({src.num_rows}, {src.num_features}).")
  return src


def _blocks(n, bs):
  for start in range(0, n, bs):
    yield start, min(start + bs, n)


class _Reader:
  def __init__(self, src, n, d, dtype):
    self.src, self.n, self.d, self.dtype = src, n, d, dtype

  def __call__(self, start, stop):
    z = np.asarray(self.src.read(start, stop))
    if z.shape != (stop - start, self.d):
      raise ValueError(f"features.read({start}, {stop}) returned shape {z.shape}, expected "
                       f"{(stop - start, self.d)}.")
    z = z.astype(self.dtype, copy=False)
    if not np.all(np.isfinite(z)):
      raise ValueError(f"features rows [{start}, {stop}) contain NaN or Inf.")
    return z


def _class_sums(z, y, c):
  """[c, d] sums of the rows of z per label (Z^T Y transposed), O(block d)."""
  out = np.zeros((c, z.shape[1]), np.float64)
  order = np.argsort(y, kind="stable")
  ys = y[order]
  starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
  sums = np.add.reduceat(z[order].astype(np.float64), starts, axis=0)
  out[ys[starts]] = sums
  return out


def _loo_at(p, inv, b, y1h):
  """(LOO predictions [k, c] float64, 1 - h, fitted) of rows p = z V at one reg
  (inv = 1/(s+reg)): the products in p's dtype, the leverages summed in float64."""
  p64 = p.astype(np.float64)
  h = (p64 * p64) @ inv
  del p64
  fitted = (p @ (inv[:, None] * b).astype(p.dtype)).astype(np.float64)
  omh = 1.0 - h
  return y1h + (fitted - y1h) / omh[:, None], omh, fitted


def streamed_label_issues(y, c, source, *, loss, temperature, reg, mult, threshold, eps,
                          outer, block_size, reg_rows, return_probs, dtype, seed,
                          progress=None):
  """The rule's numbers (see the module docstring); `find_label_issues` validates the
  arguments and builds the `LabelIssues`. Returns a dict."""
  n, d = int(source.num_rows), int(source.num_features)
  if dtype is None:
    dtype = np.float64 if np.dtype(source.dtype) == np.float64 else np.float32
  dtype = np.dtype(dtype)
  bs = max(1, min(int(block_size), n))
  read = _Reader(source, n, d, dtype)
  tick = progress or (lambda *a: None)

  # Pass 1: the Gram and the class sums; one eigendecomposition.
  from scipy.linalg import blas
  syrk = blas.dsyrk
  gram = np.zeros((d, d), np.float64, order="F")
  zty = np.zeros((c, d), np.float64)
  # The rows whose exact LOO loss chooses reg, kept (float64) as pass 1 reads them.
  rows = (None if reg is not None else np.arange(n) if n <= reg_rows else
          np.sort(np.random.default_rng(seed).choice(n, reg_rows, replace=False)))
  kept = []
  for start, stop in _blocks(n, bs):
    z = read(start, stop)
    # The Gram in float64, like select_reg's (its small eigenvalues set the LOO curve at
    # small reg): one ?syrk per block into the upper triangle.
    gram = syrk(1.0, z.astype(np.float64), trans=1, beta=1.0, c=gram, overwrite_c=1, lower=0)
    zty += _class_sums(z, y[start:stop], c)
    if rows is not None:
      sel = rows[(rows >= start) & (rows < stop)]
      if sel.size:
        kept.append(z[sel - start].astype(np.float64))
    tick(1, stop, n)
  gram = np.triu(gram) + np.triu(gram, 1).T
  if not np.all(np.isfinite(gram)):
    raise ValueError(f"Z^T Z overflows {dtype}: rescale the features.")
  s, v = np.linalg.eigh(gram)
  s = np.clip(s, 0.0, None)
  scale = float(s.sum()) / n
  if not scale > 0:
    raise ValueError("The features are all zero (trace(K) = 0): no reg can be chosen.")
  b = v.T @ zty.T  # V^T Z^T Y  [d, c]

  # reg: the exact LOO loss of a fixed row subset, each row's LOO prediction from the whole fit.
  at_edge = False
  if reg is None:
    p_sub = np.concatenate(kept) @ v
    del kept
    grid = np.logspace(-6, 3, 46) * scale
    with jax.enable_x64(True):
      losses = np.asarray(reg_selection._grid_losses(
          jnp.asarray(p_sub), jnp.asarray(s), jnp.asarray(np.eye(c)[y[rows]]),
          jnp.asarray(grid), jnp.asarray(float(temperature)), loss=loss, pty=jnp.asarray(b)))
    del p_sub
    best = int(np.argmin(losses))
    at_edge = best in (0, len(grid) - 1)
    reg = float(grid[best])
  dof = float(np.sum(s / (s + reg)))
  if mult is None:
    from diva_jax.curation.label_issues import auto_reg_multiplier
    mult = auto_reg_multiplier(dof, n)
  det_reg = reg * mult
  inv_fit, inv_det = 1.0 / (s + reg), 1.0 / (s + det_reg)

  def passes(work):
    """Passes 2 and 3 with the block products in `work` (float32 or float64)."""
    vw = v.astype(work)
    thr_sum = np.zeros(c)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    s_all, u_all, per_all = np.empty(n), np.empty(n), np.empty(n)
    m_acc, ptg = np.zeros((d, d)), np.zeros((d, c))
    value, min_omh = 0.0, np.inf
    for start, stop in _blocks(n, bs):
      p = read(start, stop).astype(work, copy=False) @ vw
      y1h = np.eye(c)[y[start:stop]]
      loo, omh_fit, _ = _loo_at(p, inv_fit, b, y1h)
      probs = detection.loo_probabilities(loo, temperature)
      np.add.at(thr_sum, y[start:stop], probs[np.arange(stop - start), y[start:stop]])
      det, omh, fitted = _loo_at(p, inv_det, b, y1h)
      min_omh = min(min_omh, float(omh.min()), float(omh_fit.min()))
      val, g_t, u, per = cf.sample_terms(np, det - y1h, omh, y1h, np.ones(stop - start), n,
                                         temperature, loss)
      value += float(val)
      s_all[start:stop], u_all[start:stop], per_all[start:stop] = 1.0 - omh, u, per
      m_acc += (p * u[:, None].astype(work)).T @ p
      ptg += p.T @ g_t.astype(work)
      tick(2, stop, n)
    kappa = float((s.max() + reg) / (s.min() + reg))
    bound = cf.f32_bound(np, kappa, np.ones(1), np.array([min_omh]))
    if work == np.float32 and not bound <= cf.F32_TOL:
      return None
    if not bound * (np.finfo(np.float64).eps / np.finfo(np.float32).eps) <= cf.F32_TOL:
      raise ValueError(
          f"The streamed rule's primal form is not accurate at reg = {reg:.3g} "
          f"(eps64 * kappa / min(1 - h) > {cf.F32_TOL:g}: the fit interpolates, d >= n or a "
          "tiny reg): pass the features in memory (the dual form is exact there) or a "
          "larger reg.")
    q_w = (inv_det[:, None] * m_acc * inv_det[None, :]).astype(work)
    vv_w = (inv_det[:, None] * ptg).astype(work)
    thresholds = np.divide(thr_sum, counts, out=np.full(c, np.inf), where=counts > 0)
    deriv = np.empty(n, np.float32)
    joint = np.zeros((c, c))
    quality = np.empty(n, np.float32)
    suggested = np.empty(n, np.int64)
    probs_all = np.empty((n, c), np.float32) if return_probs else None
    for start, stop in _blocks(n, bs):
      p = read(start, stop).astype(work, copy=False) @ vw
      yb = y[start:stop]
      y1h = np.eye(c)[yb]
      loo, _, _ = _loo_at(p, inv_fit, b, y1h)
      probs = detection.loo_probabilities(loo, temperature)
      fitted = (p @ (inv_det[:, None] * b).astype(work)).astype(np.float64)
      sl = slice(start, stop)
      g = cf.gradient(np, y1h - fitted, (p @ vv_w).astype(np.float64), u_all[sl], s_all[sl],
                      np.einsum("kj,kj->k", p @ q_w, p).astype(np.float64))
      if outer == "weighted":
        g = g + cf.self_term(1.0, per_all[sl], value, n)
      deriv[sl] = g
      above = probs >= thresholds[None, :]
      conf = above.any(1)
      assigned = np.where(above, probs, -np.inf).argmax(1)
      np.add.at(joint, (yb[conf], assigned[conf]), 1.0)
      quality[sl] = probs[np.arange(stop - start), yb]
      suggested[sl] = loo.argmax(1)
      if return_probs:
        probs_all[sl] = probs
      tick(3, stop, n)
    rows_sum = joint.sum(1, keepdims=True)
    calibrated = np.divide(joint, rows_sum, out=np.zeros_like(joint),
                           where=rows_sum > 0) * counts[:, None]
    num_issues = int(min(n, round(float(calibrated.sum() - np.trace(calibrated)))))
    return dict(derivative=deriv, loo_loss=value, quality=quality, suggested=suggested,
                probs=probs_all, num_issues=num_issues)

  out = passes(np.float32 if dtype == np.float32 else np.float64)
  redone = out is None
  if redone:  # the float32 bound failed: the same passes in float64
    out = passes(np.float64)
  deriv = out["derivative"]
  if not np.all(np.isfinite(deriv)):
    raise ValueError(f"The streamed dataset derivative is not finite at reg = {det_reg:.3g}.")
  flagged = detection.detect_detrimental(
      deriv, eps, num_flagged=out["num_issues"] if threshold == "auto" else None)
  return dict(out, flagged=flagged, reg=reg, detection_reg=det_reg, dof=dof, at_edge=at_edge,
              float64_redo=redone)
