"""Data valuation with the exact LOO closed form, and the field's evaluation protocol.

Values: one number per training sample, higher = more valuable (the data-valuation
convention; the dataset derivative's sign is the opposite: value = -dL/dw_i).

- `loo_removal_effect`: the exact change of the mean LOO loss when each sample is removed
  (the "leave-one-out" value of the data-valuation literature, with the LOO loss as the
  validation loss), for all n samples at once from one factorisation: no retraining.
- The protocol of OpenDataVal (Jiang et al., NeurIPS 2023 datasets track), implemented once:
  `noisy_detection_f1` (the F1 of a 2-means split of the values against the noise mask;
  here the exact 1-D 2-means optimum, the global minimum that k-means approximates),
  `point_curve` (the accuracy of a downstream model as the highest- or lowest-valued samples
  are removed, or added first) and `curve_auc` (its normalised area).

The maths of `loo_removal_effect` (docs/math.md, "removing one sample from the LOO loss"):
with G = K A^(1/2) M^-1 A^(1/2) (M = reg I + A^(1/2) K A^(1/2)), fitted values G Y,
leverages h_i = G_ii, 1 - h_i = reg (M^-1)_ii and LOO residuals e_i = r_i / (1 - h_i), the
refit without sample j has residuals r_i + G_ij e_j and 1 - h_i^(-j) = (1 - h_i) -
G_ij G_ji / (1 - h_j) (Sherman-Morrison on the removal), so every sample's LOO residual after
removing j is closed-form: O(n^2 c) for all j, O(n^2) memory, in float64.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.curation import checks as cc
from diva_jax.loo import checks as loo_checks

__all__ = ["loo_removal_effect", "two_means_split", "noisy_detection_f1", "point_curve",
           "curve_auc", "CURVES"]

CURVES = ("remove_low", "remove_high", "add_high", "add_low")


def _loss(f, y, loss, temperature):
  if loss == "mse":
    return jnp.sum((f - y) ** 2, -1)
  return -jnp.sum(y * jax.nn.log_softmax(f / temperature, -1), -1)


@functools.partial(jax.jit, static_argnames=("loss",))
def _removed_losses(g_cols, g_rows, j_idx, y, r, omh, mask, temperature, loss):
  """Mean LOO loss over mask minus {j}, after removing each j of the block.

  g_cols: [n, B] = G[:, J]; g_rows: [B, n] = G[J, :]; r: [n, c] residuals of the fit;
  omh: [n] 1 - h."""
  n = y.shape[0]
  e_j = r[j_idx] / omh[j_idx, None]                                  # [B, c]
  res = r[:, None, :] + g_cols[:, :, None] * e_j[None]              # [n, B, c]
  omh_ij = omh[:, None] - g_cols * g_rows.T / omh[j_idx][None]      # [n, B]
  m = mask[:, None] & (jnp.arange(n)[:, None] != j_idx[None])       # [n, B]
  omh_ij = jnp.where(m, omh_ij, 1.0)
  f = y[:, None, :] + res / omh_ij[..., None]
  l = jnp.where(m, _loss(f, y[:, None, :], loss, temperature), 0.0)
  return jnp.sum(l, 0) / jnp.sum(m, 0)


def loo_removal_effect(targets, *, features=None, kernel=None, reg: float,
                       weights=None, loss: str = "ce", temperature: float = 0.3,
                       eval_mask=None, block_size: int = 128) -> np.ndarray:
  """The exact change of the mean LOO loss when each sample is removed, without refitting.

  value_j = L_{-j} - L, where L is the mean LOO loss over the evaluated samples
  (`diva_jax.loo_loss`'s definition: weights inside the fit, unweighted outer mean) and
  L_{-j} the same with sample j's weight set to 0 and j left out of the mean. Positive:
  removing j makes the others' LOO predictions worse (j is valuable); negative: j hurts.
  The first-order version of this is minus the dataset derivative (times the weight).

  Args:
    targets: [n, c] regression targets (one-hot labels for classification).
    features: [n, d] features, or kernel: [n, n] a PSD kernel (exactly one).
    reg: the ridge reg > 0.
    weights: [n] non-negative sample weights of the fit (default ones).
    loss, temperature: "ce" (softmax(f / temperature) cross-entropy) or "mse".
    eval_mask: [n] the samples the LOO loss averages over (default all).
    block_size: removals computed together ([n, block, c] float64 memory).

  Returns:
    [n] float64 NumPy array of L_{-j} - L (NaN where no evaluated sample is left).

  Raises:
    ValueError: on bad arguments, before anything is computed.
  """
  t = cc.check_array("targets", targets, "[n, c]", 2, kinds="f")
  n = t.shape[0]
  loo_checks.check_one_of(features, kernel)
  x = cc.check_array("features" if kernel is None else "kernel",
                     features if kernel is None else kernel,
                     "[n, d]" if kernel is None else "[n, n]", 2, kinds="f")
  if x.shape[0] != n or (kernel is not None and x.shape != (n, n)):
    raise ValueError(f"{'features' if kernel is None else 'kernel'} must have {n} rows (the "
                     f"rows of targets){'' if kernel is None else ' and columns'}, got shape "
                     f"{x.shape}.")
  reg = cc.check_real("reg", reg, positive=True)
  cc.check_loss(loss, temperature)
  temperature = cc.check_real("temperature", temperature, positive=True)
  a = (np.ones(n) if weights is None
       else cc.check_weights("weights", weights, n, np.float64)).astype(np.float64)
  mask = np.ones(n, bool) if eval_mask is None else cc.check_mask("eval_mask", eval_mask, n)
  block_size = cc.check_int("block_size", block_size, 1)

  y = np.asarray(t, np.float64)
  x = np.asarray(x, np.float64)
  k = x @ x.T if kernel is None else x
  sa = np.sqrt(a)
  m_inv = _spd_inverse(reg * np.eye(n) + sa[:, None] * k * sa[None, :])
  omh = reg * np.diag(m_inv)                            # 1 - h_i, exact
  # G = K A^1/2 M^-1 A^1/2. Rows with a_i > 0 from A^1/2 K A^1/2 M^-1 = I - reg M^-1 (no
  # product; off the diagonal subtraction-free), the others (a_i = 0) by the product.
  safe = np.where(a > 0, sa, 1.0)
  g = -reg * m_inv * (sa[None, :] / safe[:, None])
  g[np.diag_indices(n)] += 1.0
  zero = np.flatnonzero(a == 0)
  if zero.size:
    g[zero] = (k[zero] * sa[None, :]) @ (m_inv * sa[None, :])
  # Residuals fit - y: for a_i > 0 the subtraction-free form -reg (M^-1 A^1/2 Y)_i / sqrt(a_i).
  r = np.where((a > 0)[:, None], -reg * (m_inv @ (sa[:, None] * y)) / safe[:, None],
               g @ y - y)
  with jax.enable_x64(True):
    f_all = jnp.asarray(y) + jnp.asarray(r) / jnp.asarray(omh)[:, None]
    per = _loss(f_all, jnp.asarray(y), loss, temperature)
    base = float(jnp.sum(jnp.where(jnp.asarray(mask), per, 0.0)) / max(int(mask.sum()), 1))
    out = np.empty(n)
    args = [jnp.asarray(v) for v in (y, r, omh, mask)]
    block = min(block_size, n)
    for start in range(0, n, block):  # one compiled shape: the last block is padded
      j = np.minimum(np.arange(start, start + block), n - 1)
      got = np.asarray(_removed_losses(jnp.asarray(g[:, j]), jnp.asarray(g[j, :]),
                                       jnp.asarray(j), *args, temperature, loss))
      out[j] = got
  return out - base


def _spd_inverse(m):
  """The inverse of a symmetric positive-definite matrix (LAPACK potrf + potri)."""
  from scipy.linalg import lapack
  chol, info = lapack.dpotrf(m, lower=False)
  if info != 0:
    raise np.linalg.LinAlgError(f"the matrix reg I + A^1/2 K A^1/2 is not positive definite "
                                f"(potrf info {info}): is the kernel PSD?")
  inv, info = lapack.dpotri(chol, lower=False)
  if info != 0:
    raise np.linalg.LinAlgError(f"potri failed (info {info}).")
  upper = np.triu(inv)
  return upper + np.triu(inv, 1).T


def two_means_split(values) -> np.ndarray:
  """[n] bool: the low cluster of the exact (global) 2-means split of 1-D values.

  1-D k-means with 2 clusters is a threshold split of the sorted values; this scans every
  split and returns the one of least within-cluster sum of squares (the first on ties), the
  optimum that `sklearn.cluster.KMeans(2)` (OpenDataVal's rule) reaches from a good start.
  All-equal values give an empty low cluster.
  """
  v = cc.check_array("values", values, "[n]", 1, kinds="fiu").astype(np.float64)
  n = v.shape[0]
  if n < 2:
    raise ValueError(f"values must hold at least 2 samples, got {n}.")
  order = np.argsort(v, kind="stable")
  s = v[order]
  low = np.zeros(n, bool)
  if s[0] == s[-1]:
    return low
  s = s - s.mean()
  c1, c2 = np.cumsum(s), np.cumsum(s ** 2)
  k = np.arange(1, n)                                  # the low cluster: s[:k]
  sse_low = c2[:-1] - c1[:-1] ** 2 / k
  sse_high = (c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (n - k)
  sse = sse_low + sse_high
  valid = s[k - 1] < s[k]                              # never split equal values
  best = int(k[valid][np.argmin(sse[valid])])
  low[order[:best]] = True
  return low


def noisy_detection_f1(values, noisy_mask) -> float:
  """F1 of the low 2-means cluster of the values (`two_means_split`) as the predicted noisy
  samples, against the noise mask (OpenDataVal's noisy-sample detection metric)."""
  pred = two_means_split(values)
  noisy = cc.check_mask("noisy_mask", noisy_mask, pred.shape[0])
  tp = int(np.sum(pred & noisy))
  if tp == 0:
    return 0.0
  precision, recall = tp / int(pred.sum()), tp / int(noisy.sum())
  return 2 * precision * recall / (precision + recall)


def _order(values, seed):
  """Sample indices from the lowest value to the highest, ties broken at random (seeded)."""
  v = np.asarray(values, np.float64)
  tie = np.random.default_rng(seed).permutation(v.shape[0])
  return np.lexsort((tie, v))


def point_curve(values, fractions: Sequence[float], evaluate: Callable[[np.ndarray], float],
                *, curve: str = "remove_low", seed: int = 0) -> np.ndarray:
  """A downstream model's score as samples are removed or added in the order of their value.

  Args:
    values: [n] sample values (higher = more valuable).
    fractions: the fractions x of n in [0, 1] at which to score.
    evaluate: keep ([n] bool) -> the score of the downstream model trained on the kept
      samples (e.g. its test accuracy).
    curve: "remove_low" / "remove_high": train on all but the round(x n) lowest / highest
      valued; "add_high" / "add_low": train on only the round(x n) highest / lowest valued.
    seed: breaks ties between equal values at random (so a constant valuation is a random
      order, not the input order).

  Returns:
    [len(fractions)] the scores.
  """
  v = cc.check_array("values", values, "[n]", 1, kinds="fiu")
  if curve not in CURVES:
    raise ValueError(f"curve must be one of {CURVES}, got {curve!r}.")
  fr = np.asarray(fractions, np.float64)
  if fr.ndim != 1 or fr.size == 0 or np.any(~np.isfinite(fr)) or fr.min() < 0 or fr.max() > 1:
    raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got "
                     f"{list(np.atleast_1d(fractions))}.")
  n = v.shape[0]
  order = _order(v, seed)               # low -> high
  if curve in ("remove_high", "add_high"):
    order = order[::-1]
  out = []
  for f in fr:
    k = int(round(f * n))
    chosen = np.zeros(n, bool)
    chosen[order[:k]] = True
    out.append(float(evaluate(~chosen if curve.startswith("remove") else chosen)))
  return np.asarray(out)


def curve_auc(fractions: Sequence[float], scores: Sequence[float]) -> float:
  """The trapezoid area under score(fraction), divided by the fraction range: the curve's
  mean score (fractions must increase)."""
  fr = np.asarray(fractions, np.float64)
  sc = np.asarray(scores, np.float64)
  if fr.ndim != 1 or fr.shape != sc.shape or fr.size < 2 or np.any(np.diff(fr) <= 0):
    raise ValueError(f"fractions must be increasing, at least 2, with one score each; got "
                     f"{fr.size} fractions and {sc.size} scores.")
  return float(np.sum((sc[1:] + sc[:-1]) / 2 * np.diff(fr)) / (fr[-1] - fr[0]))
