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
           `select_reg` itself), each evaluated with the whole fit; on a large problem the
           grid is searched coarse to fine (`_choose_reg`).
  pass 2:  per block P_b = Z_b V: the LOO predictions at reg (the class sums of the
           probabilities of the given labels: the confident joint's thresholds) and the
           derivative's per-sample terms at the detection reg; accumulated in the eigenbasis
           M = P^T diag(u) P, P^T G~ (d x d, d x c).
  pass 3:  per block again P_b: dL/da_k = <r_k, p_k^T v> + u_k S_kk - p_k^T Q p_k with
           Q = D M D, v = D P^T G~, D = diag(1 / (s + reg_det)); the LOO probabilities at reg
           again, for the confident joint's counts, the quality scores and suggestions.

Passes 2 and 3 run per block as one jitted XLA function each (`_pass2_block`,
`_pass3_block`: one compilation per block shape; the [block, c] work fused, in float64).

Memory besides the source: O(d^2 + d c + block_size (d + c) + n) and, with
`return_probs=True` only, the [n, c] float32 LOO probabilities. Nothing [n, c] is float64.
The block products run in the compute dtype (float32 for float32 features); the float32
accuracy bound of `diva_jax.loo.closed_form` is checked after pass 2, and a failing float32
run is redone in float64 (passes 2 and 3) instead of returning a wrong number, and where
float64 fails it too (an interpolating fit: d >= n and a tiny reg, where only the in-memory
dual form is exact) the call is refused.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.curation import detect
from diva_jax.loo import closed_form as cf
from diva_jax.loo import reg as reg_selection
from diva_jax.loo.streaming import driver as streaming
from diva_jax.parallel import multihost

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


def _blocks(lo, hi, bs):
  for start in range(lo, hi, bs):
    yield start, min(start + bs, hi)


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


def _class_sums(z64, y, c):
  """[c, d] float64 sums of the rows of z64 per label (Z^T Y transposed): a sparse one-hot
  product, O(block d) whatever c."""
  from scipy import sparse
  k = z64.shape[0]
  onehot = sparse.csr_matrix((np.ones(k), (y, np.arange(k))), shape=(c, k))
  return np.asarray(onehot @ z64)


# The coarse-to-fine reg search is used when the grid's [rows, c] products are this large.
_COARSE_ENTRIES = 1 << 27


def _choose_reg(p_sub, s, y_sub, grid, temperature, loss, b, c, total_rows, total):
  """The grid index with the smallest exact LOO loss of the reg rows (this process's share
  `p_sub` of `total_rows`; `total` sums the losses over the processes that share the rows,
  the identity for one): every grid value, or, for a large problem (rows x c x grid >
  `_COARSE_ENTRIES`), every third one and then the neighbours of the best, which finds the
  same minimum whenever the LOO curve is unimodal at the grid's resolution (20 of 46
  evaluations)."""
  with jax.enable_x64(True):  # the rows, one-hots and fit, on the device once for every call
    args = (jnp.asarray(p_sub), jnp.asarray(s), jnp.asarray(np.eye(c)[y_sub]))
    pty, temp = jnp.asarray(b), jnp.asarray(float(temperature))

  def losses_at(idx):
    if p_sub.shape[0] == 0:
      local = np.zeros(len(idx))
    else:
      with jax.enable_x64(True):
        local = np.asarray(reg_selection._grid_losses(
            *args, jnp.asarray(grid[idx]), temp, loss=loss, pty=pty)) * (
                p_sub.shape[0] / total_rows)
    # a non-finite loss anywhere is +inf everywhere (as in select_reg)
    return total(np.where(np.isfinite(local), local, np.inf))
  g = len(grid)
  if total_rows * c * g <= _COARSE_ENTRIES:
    return int(np.argmin(losses_at(np.arange(g))))
  coarse = np.unique(np.r_[np.arange(0, g, 3), g - 1])
  losses = np.full(g, np.inf)
  losses[coarse] = losses_at(coarse)
  best = int(np.argmin(losses))
  fine = np.array([i for i in range(best - 2, best + 3) if 0 <= i < g and i not in coarse],
                  dtype=int)
  if fine.size:
    losses[fine] = losses_at(fine)
  return int(np.argmin(losses))


# The per-block work of passes 2 and 3, jitted (one compilation per block shape and dtype):
# the products in the compute dtype, every [block, c] quantity in float64, fused by XLA.


def _bound(f, min_omh):
  """The float32 accuracy bound eps32 * kappa / min(1 - h) of a factorisation `f`."""
  kappa = float((f["s"].max() + f["reg"]) / (f["s"].min() + f["reg"]))
  return float(cf.f32_bound(np, kappa, np.ones(1), np.array([min_omh])))


def _log_softmax(x):
  x = x - jnp.max(x, axis=1, keepdims=True)
  return x - jnp.log(jnp.sum(jnp.exp(x), axis=1, keepdims=True))


@jax.jit(static_argnames=("c", "loss"))
def _pass2_block(z, y, vw, w2, inv2, temperature, n, *, c, loss):
  """Per block: the given label's LOO probability summed per class (the thresholds), 1 - h
  at the fit, S_kk, u, the per-sample losses and loss at the detection reg, and the block's
  parts of M = P^T diag(u) P and P^T G~."""
  f64 = jnp.float64
  k = z.shape[0]
  p = z.astype(vw.dtype) @ vw
  p64 = p.astype(f64)
  omh2 = 1.0 - (p64 * p64) @ inv2
  fitted2 = (p @ w2).astype(f64)
  omh_fit, omh = omh2[:, 0], omh2[:, 1]
  y1h = jax.nn.one_hot(y, c, dtype=f64)
  rows = jnp.arange(k)
  loo = y1h + (fitted2[:, :c] - y1h) / omh_fit[:, None]
  p_given = jnp.exp(_log_softmax(loo / temperature)[rows, y])
  thr = jax.ops.segment_sum(p_given, y, num_segments=c)
  det = y1h + (fitted2[:, c:] - y1h) / omh[:, None]
  val, g_t, u, per = cf.sample_terms(jnp, det - y1h, omh, y1h, jnp.ones((k,), f64), n,
                                     temperature, loss)
  m = (p * u[:, None].astype(p.dtype)).T @ p
  ptg = p.T @ g_t.astype(p.dtype)
  return (thr, omh_fit, 1.0 - omh, u, per, val, m.astype(f64), ptg.astype(f64),
          jnp.minimum(omh.min(), omh_fit.min()))


@jax.jit(static_argnames=("c", "weighted", "with_probs"))
def _pass3_block(z, y, vw, w3, q_w, omh_fit, u, s_det, per, value, thresholds, temperature,
                 n, *, c, weighted, with_probs):
  """Per block: dL/da, the confident joint's counts, the quality scores, the suggested
  labels and (with_probs) the LOO probabilities in float32."""
  f64 = jnp.float64
  k = z.shape[0]
  p = z.astype(vw.dtype) @ vw
  out3 = (p @ w3).astype(f64)
  y1h = jax.nn.one_hot(y, c, dtype=f64)
  loo = y1h + (out3[:, :c] - y1h) / omh_fit[:, None]
  probs = jnp.exp(_log_softmax(loo / temperature))
  quad = jnp.sum((p @ q_w) * p, axis=1).astype(f64)
  g = cf.gradient(jnp, y1h - out3[:, c:2 * c], out3[:, 2 * c:], u, s_det, quad)
  if weighted:
    g = g + cf.self_term(1.0, per, value, n)
  above = probs >= thresholds[None, :]
  conf = above.any(1)
  assigned = jnp.argmax(jnp.where(above, probs, -jnp.inf), axis=1)
  joint = jax.ops.segment_sum(conf.astype(f64), y * c + assigned, num_segments=c * c)
  rows = jnp.arange(k)
  return (g, joint.reshape(c, c), probs[rows, y], jnp.argmax(loo, axis=1),
          probs.astype(jnp.float32) if with_probs else None)


def streamed_label_issues(y, c, source, *, loss, temperature, reg, mult, threshold, eps,
                          outer, block_size, reg_rows, return_probs, dtype, seed,
                          distributed=False, progress=None):
  """The rule's numbers (see the module docstring); `find_label_issues` validates the
  arguments and builds the `LabelIssues`. Returns a dict.

  distributed: each process reads only its `multihost.row_range` of the rows; the passes'
  sums are added over every process (in process order, so every process takes the same
  decisions), the eigendecomposition is process 0's, and the per-sample arrays are gathered,
  so every process returns the whole result."""
  n, d = int(source.num_rows), int(source.num_features)
  if dtype is None:
    dtype = np.float64 if np.dtype(source.dtype) == np.float64 else np.float32
  dtype = np.dtype(dtype)
  bs = max(1, min(int(block_size), n))
  read = _Reader(source, n, d, dtype)
  tick = progress or (lambda *a: None)
  lo, hi = multihost.row_range(n) if distributed else (0, n)
  total = multihost.allsum if distributed else (lambda a: a)

  rows = (None if reg is not None else np.arange(n) if n <= reg_rows else
          np.sort(np.random.default_rng(seed).choice(n, reg_rows, replace=False)))
  reg_given, mult_given = reg, mult

  def factor():
    """Pass 1 (the Gram in float64, the class sums, the reg rows), the eigendecomposition,
    reg and the detection reg."""
    from scipy.linalg import blas
    gram = np.zeros((d, d), np.float64, order="F")
    zty = np.zeros((c, d), np.float64)
    kept = []
    for start, stop in _blocks(lo, hi, bs):
      z64 = read(start, stop).astype(np.float64, copy=False)
      # The Gram in float64, like select_reg's (its small eigenvalues set the LOO curve at
      # small reg): one ?syrk per block into the upper triangle.
      gram = blas.dsyrk(1.0, z64, trans=1, beta=1.0, c=gram, overwrite_c=1, lower=0)
      zty += _class_sums(z64, y[start:stop], c)
      if rows is not None:
        sel = rows[(rows >= start) & (rows < stop)]
        if sel.size:
          kept.append(z64[sel - start])
      del z64
      tick(1, stop, n)
    gram = total(np.triu(gram) + np.triu(gram, 1).T)
    zty = total(zty)
    if not np.all(np.isfinite(gram)):
      raise ValueError(f"Z^T Z overflows {dtype}: rescale the features.")
    if distributed and multihost.process_count() > 1:  # process 0's eigenvectors everywhere
      eig = (multihost.save_npz_bytes(dict(zip("sv", np.linalg.eigh(gram))))
             if multihost.process_index() == 0 else None)
      eig = multihost.load_npz_bytes(multihost.broadcast_bytes(eig))
      s, v = eig["s"], eig["v"]
    else:
      s, v = np.linalg.eigh(gram)
    s = np.clip(s, 0.0, None)
    scale = float(s.sum()) / n
    if not scale > 0:
      raise ValueError("The features are all zero (trace(K) = 0): no reg can be chosen.")
    b = v.T @ zty.T  # V^T Z^T Y  [d, c]
    # reg: the exact LOO loss of a fixed row subset, each row's LOO prediction from the
    # whole fit.
    at_edge, reg, mult = False, reg_given, mult_given
    if reg is None:
      p_sub = (np.concatenate(kept) if kept else np.zeros((0, d))) @ v
      del kept
      grid = np.logspace(-6, 3, 46) * scale
      mine = rows[(rows >= lo) & (rows < hi)]
      best = _choose_reg(p_sub, s, y[mine], grid, temperature, loss, b, c, len(rows),
                         total)
      del p_sub
      at_edge = best in (0, len(grid) - 1)
      reg = float(grid[best])
    dof = float(np.sum(s / (s + reg)))
    if mult is None:
      from diva_jax.curation.label_issues import auto_reg_multiplier
      mult = auto_reg_multiplier(dof, n)
    return dict(s=s, v=v, b=b, reg=reg, at_edge=at_edge, dof=dof, det_reg=reg * mult)

  def passes(work, f):
    """Passes 2 and 3 with the block products in `work` (float32 or float64); None when
    float32 fails its accuracy bound."""
    s, v, b, reg, det_reg = f["s"], f["v"], f["b"], f["reg"], f["det_reg"]
    inv_fit, inv_det = 1.0 / (s + reg), 1.0 / (s + det_reg)
    vw = jnp.asarray(v.astype(work))
    # V^T Z^T Y scaled for the fit and the detection reg, side by side: one product per block.
    w_fit, w_det = inv_fit[:, None] * b, inv_det[:, None] * b
    w2 = jnp.asarray(np.concatenate([w_fit, w_det], 1).astype(work))
    inv2 = jnp.asarray(np.stack([inv_fit, inv_det], 1))
    temp = jnp.asarray(float(temperature), jnp.float64)
    thr_sum = np.zeros(c)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    s_all, u_all, per_all = np.empty(n), np.empty(n), np.empty(n)
    omh_fit_all = np.empty(n)
    m_acc, ptg = np.zeros((d, d)), np.zeros((d, c))
    value, min_omh = 0.0, np.inf
    for start, stop in _blocks(lo, hi, bs):
      sl = slice(start, stop)
      thr, omh_fit, s_det, u, per, val, m, pg, mo = _pass2_block(
          read(start, stop), y[sl], vw, w2, inv2, temp, float(n), c=c, loss=loss)
      thr_sum += np.asarray(thr)
      omh_fit_all[sl], s_all[sl], u_all[sl], per_all[sl] = omh_fit, s_det, u, per
      value += float(val)
      m_acc += np.asarray(m)
      ptg += np.asarray(pg)
      min_omh = min(min_omh, float(mo))
      tick(2, stop, n)
    if distributed:
      thr_sum, m_acc, ptg = total(thr_sum), total(m_acc), total(ptg)
      value, min_omh = float(total(np.float64(value))), multihost.allmin(min_omh)
    bound = _bound(f, min_omh)
    if work == np.float32 and not bound <= cf.F32_TOL:
      return None
    if not bound * (np.finfo(np.float64).eps / np.finfo(np.float32).eps) <= cf.F32_TOL:
      raise ValueError(
          f"The streamed rule's primal form is not accurate at reg = {reg:.3g} "
          f"(eps64 * kappa / min(1 - h) > {cf.F32_TOL:g}: the fit interpolates, d >= n or a "
          "tiny reg): pass the features in memory (the dual form is exact there) or a "
          "larger reg.")
    q_w = jnp.asarray((inv_det[:, None] * m_acc * inv_det[None, :]).astype(work))
    # [fit | detection | S G~] columns: the three [block, c] products of pass 3 in one.
    w3 = jnp.asarray(np.concatenate([w_fit, w_det, inv_det[:, None] * ptg], 1).astype(work))
    thresholds = jnp.asarray(
        np.divide(thr_sum, counts, out=np.full(c, np.inf), where=counts > 0))
    deriv = np.empty(n, np.float32)
    joint = np.zeros((c, c))
    quality = np.empty(n, np.float32)
    suggested = np.empty(n, np.int64)
    probs_all = np.empty((n, c), np.float32) if return_probs else None
    for start, stop in _blocks(lo, hi, bs):
      sl = slice(start, stop)
      g, jt, q, sug, probs = _pass3_block(
          read(start, stop), y[sl], vw, w3, q_w, omh_fit_all[sl], u_all[sl], s_all[sl],
          per_all[sl], value, thresholds, temp, float(n), c=c, weighted=outer == "weighted",
          with_probs=bool(return_probs))
      deriv[sl], quality[sl], suggested[sl] = g, q, sug
      joint += np.asarray(jt)
      if return_probs:
        probs_all[sl] = probs
      tick(3, stop, n)
    if distributed and multihost.process_count() > 1:
      joint = total(joint)
      deriv, quality, suggested = (multihost.gather_rows(a[lo:hi], n)
                                   for a in (deriv, quality, suggested))
      if return_probs:
        probs_all = multihost.gather_rows(probs_all[lo:hi], n)
    rows_sum = joint.sum(1, keepdims=True)
    calibrated = np.divide(joint, rows_sum, out=np.zeros_like(joint),
                           where=rows_sum > 0) * counts[:, None]
    num_issues = int(min(n, round(float(calibrated.sum() - np.trace(calibrated)))))
    return dict(derivative=deriv, loo_loss=value, quality=quality, suggested=suggested,
                probs=probs_all, num_issues=num_issues)

  work = np.float32 if dtype == np.float32 else np.float64
  with jax.enable_x64(True):
    f = factor()
    out = passes(work, f)
    redone = out is None
    if redone:  # the float32 bound failed: passes 2 and 3 again in float64
      out = passes(np.float64, f)
  reg, det_reg = f["reg"], f["det_reg"]
  deriv = out["derivative"]
  if not np.all(np.isfinite(deriv)):
    raise ValueError(f"The streamed dataset derivative is not finite at reg = {det_reg:.3g}.")
  flagged = detect.detect_detrimental(
      deriv, eps, num_flagged=out["num_issues"] if threshold == "auto" else None)
  return dict(out, flagged=flagged, reg=reg, detection_reg=det_reg, dof=f["dof"],
              at_edge=f["at_edge"], float64_redo=redone)
