"""Choosing reg: the minimum of the exact unweighted LOO loss over a grid.

One eigendecomposition (of Z^T Z when d <= n, else of K) serves the whole grid; each grid
value then costs O(n min(n, d) c), as generalised cross-validation in scikit-learn's RidgeCV.
The eigendecomposition is computed in float64 (the LOO curve at small reg needs it; the
fits themselves are guarded in float32, see `diva_jax.loo.api`) and cached per feature matrix,
so repeated calls on the same features (other targets, losses or grids) reuse it.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.loo import checks as _checks
from diva_jax.loo import closed_form as cf

__all__ = ["RegSelection", "select_reg", "degrees_of_freedom", "spectral_cache_info",
           "clear_spectral_cache"]


class RegSelection(NamedTuple):
  """Result of `select_reg`.

  Attributes:
    reg: the grid value with the smallest unweighted LOO loss (absolute units).
    grid: [g] the absolute grid that was searched (relative grid x scale).
    losses: [g] the LOO loss at each grid value.
    scale: trace(K) / n, the mean squared feature norm that makes the grid unit-free.
    at_edge: True when the minimum is the first or last grid value (a warning is issued:
      the true minimum may lie outside the grid; widen `rel_grid`).
  """
  reg: jax.Array
  grid: jax.Array
  losses: jax.Array
  scale: jax.Array
  at_edge: bool = False


_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 4
_STATS = {"hits": 0, "misses": 0}


def spectral_cache_info() -> dict:
  """{'hits', 'misses', 'size'} of the eigendecomposition cache."""
  return dict(_STATS, size=len(_CACHE))


def clear_spectral_cache() -> None:
  _CACHE.clear()
  _STATS.update(hits=0, misses=0)


def _spectral_factor(x: np.ndarray, form: str):
  """P [n, r], s [r] (float64) with S(reg) = P diag(1 / (s + reg)) P^T for a = 1."""
  x = np.asarray(x, np.float64)
  if form == "primal":
    evals, vecs = np.linalg.eigh(x.T @ x)
    return x @ vecs, np.clip(evals, 0.0, None)
  kernel = x @ x.T if form == "gram_dual" else x
  evals, vecs = np.linalg.eigh(kernel)
  evals = np.clip(evals, 0.0, None)
  return vecs * np.sqrt(evals)[None, :], evals


def _cached_factor(x, form, cache: bool = True):
  arr = np.ascontiguousarray(np.asarray(x))
  if not cache:
    return _spectral_factor(arr, form)
  key = (form, arr.shape, arr.dtype.str, hashlib.blake2b(arr.view(np.uint8).ravel(),
                                                         digest_size=16).hexdigest())
  if key in _CACHE:
    _STATS["hits"] += 1
    _CACHE.move_to_end(key)
    return _CACHE[key]
  _STATS["misses"] += 1
  out = _spectral_factor(arr, form)
  _CACHE[key] = out
  while len(_CACHE) > _CACHE_SIZE:
    _CACHE.popitem(last=False)
  return out


@jax.jit(static_argnames=("loss",))
def _grid_losses(p, s, targets, grid, temperature, loss, pty=None):
  """The LOO loss of the rows of p at each reg of grid; pty = V^T Z^T Y of the whole fit
  (default: of these rows, i.e. the rows are the whole training set)."""
  n = targets.shape[0]
  if pty is None:
    pty = cf.dot(p.T, targets)  # [r, c]
  p2 = p * p
  mask = jnp.ones((n,), targets.dtype)

  def one(reg):
    inv = 1.0 / (s + reg)
    s_diag = cf.dot(p2, inv)
    fitted = cf.dot(p, inv[:, None] * pty)
    preds = (fitted - s_diag[:, None] * targets) / (1.0 - s_diag)[:, None]
    return cf.mean_loss(loss, preds, targets, mask, temperature)

  losses = jax.lax.map(one, grid)
  return jnp.where(jnp.isfinite(losses), losses, jnp.inf)


def select_reg(targets: jax.Array, *, features: Optional[jax.Array] = None,
               kernel: Optional[jax.Array] = None, rel_grid: Optional[jax.Array] = None,
               loss: str = "mse", temperature: float = 1.0,
               cache: bool = True) -> RegSelection:
  """Chooses reg by minimising the unweighted (a = 1) exact LOO loss over a grid.

  The grid is `rel_grid * trace(K) / n` (trace(K)/n = mean squared feature norm), so the
  default relative grid is unit-free. Every reg it can return is one the LOO functions
  compute accurately in the features' dtype (float32 fits are guarded, see `diva_jax.loo.api`).

  Args:
    targets: [n, c], n >= 2.
    features: [n, d] or kernel: [n, n] (exactly one; concrete arrays).
    rel_grid: [g] relative grid > 0, default logspace(-6, 3, 46).
    loss, temperature: as in `loo_loss`.
    cache: keep the eigendecomposition (of these exact bytes, the last 4 matrices) for the
      next call on the same features: `degrees_of_freedom` and `find_label_issues` reuse it
      (`spectral_cache_info()`, `clear_spectral_cache()`). False: computed afresh, kept
      nowhere.

  Returns:
    A `RegSelection` (reg, grid, losses, scale, at_edge), in the features' dtype.

  Raises:
    ValueError: on bad input, fewer than 2 samples, all-zero features (every LOO loss is
      then the same and no reg is better than another), or when every grid value gives a
      non-finite LOO loss.
  """
  if np.ndim(targets) != 2:
    raise ValueError(f"targets must have shape [n, c], got shape {np.shape(targets)}.")
  n = np.shape(targets)[0]
  if n < 2:
    raise ValueError(f"select_reg needs at least 2 samples (leave-one-out), got n = {n}.")
  _checks.check_loss_args(loss, temperature, targets)
  x_rows = np.shape(features if features is not None else kernel)[0] if (
      features is not None or kernel is not None) else n
  if x_rows != n:
    name = "features" if features is not None else "kernel"
    raise ValueError(f"{name} has {x_rows} rows but targets has {n}: {name} shape "
                     f"{np.shape(features if features is not None else kernel)} vs targets "
                     f"shape {np.shape(targets)}.")
  _checks.check_ridge_inputs(np.ones((n,)), targets, features, kernel, 1.0)
  x = features if features is not None else kernel
  if not all(_checks.is_concrete(a) for a in (targets, x)):
    raise ValueError("select_reg needs concrete arrays (call it outside jax.jit).")
  dtype = _checks.float_dtype(x, targets)
  if rel_grid is None:
    rel_grid = np.logspace(-6, 3, 46)
  if isinstance(rel_grid, (str, bytes)):
    raise ValueError(f"rel_grid must be a 1-D array of numbers > 0, got {rel_grid!r}.")
  rel = np.asarray(rel_grid, np.float64)
  if rel.ndim != 1 or rel.size == 0:
    raise ValueError(f"rel_grid must be a non-empty 1-D array, got shape {rel.shape}.")
  if not np.all(np.isfinite(rel) & (rel > 0)):
    raise ValueError(f"rel_grid values must all be finite and > 0, got {rel}.")
  form = cf.choose_form(features, kernel, n)
  p, s = _cached_factor(x, form, cache)
  scale = float(np.sum(s)) / n  # trace(K) / n
  if not scale > 0:
    raise ValueError(f"The {'features' if features is not None else 'kernel'} are all zero "
                     "(trace(K) = 0): every reg gives the same LOO loss, so none can be chosen.")
  grid = rel * scale
  with jax.enable_x64(True):
    losses = np.asarray(_grid_losses(jnp.asarray(p), jnp.asarray(s),
                                     jnp.asarray(targets, jnp.float64), jnp.asarray(grid),
                                     jnp.asarray(float(temperature), jnp.float64), loss=loss))
  if not np.any(np.isfinite(losses)):
    raise ValueError("The LOO loss is not finite at any grid value: check the features and "
                     "targets for extreme values.")
  best = int(np.argmin(losses))
  at_edge = len(grid) > 1 and best in (0, len(grid) - 1)
  if at_edge:
    side = "smallest" if best == 0 else "largest"
    warnings.warn(
        f"select_reg: the LOO loss is smallest at the {side} grid value (reg = {grid[best]:.3g}, "
        f"relative {rel[best]:.3g}); the best reg may lie outside the grid. Widen rel_grid.",
        RuntimeWarning, stacklevel=2)
  cast = lambda a: jnp.asarray(a, dtype)
  return RegSelection(cast(grid[best]), cast(grid), cast(losses), cast(scale), bool(at_edge))


def degrees_of_freedom(*, features: Optional[jax.Array] = None,
                       kernel: Optional[jax.Array] = None, reg: float,
                       cache: bool = True) -> float:
  """The effective degrees of freedom of the unweighted ridge fit at `reg`:
  trace(K (K + reg I)^-1) = sum_j s_j / (s_j + reg) over the eigenvalues s of K = Z Z^T
  (or of Z^T Z), a number in [0, min(n, d)]. Divided by n it is the mean leverage, the share
  of each target the fit reproduces. It reuses `select_reg`'s cached eigendecomposition, so
  after `select_reg` on the same features it costs O(min(n, d)).

  Args:
    features: [n, d] or kernel: [n, n] (exactly one; concrete arrays).
    reg: ridge strength > 0.
    cache: as in `select_reg`.

  Returns:
    The degrees of freedom, a float.
  """
  _checks.check_one_of(features, kernel)
  x = features if features is not None else kernel
  if np.ndim(x) != 2:
    raise ValueError(f"{'features' if features is not None else 'kernel'} must be 2-D, got "
                     f"shape {np.shape(x)}.")
  n = np.shape(x)[0]
  _checks.check_ridge_inputs(np.ones((n,)), np.zeros((n, 1)), features, kernel, reg)
  if not _checks.is_concrete(x):
    raise ValueError("degrees_of_freedom needs a concrete array (call it outside jax.jit).")
  form = cf.choose_form(features, kernel, n)
  _, s = _cached_factor(x, form, cache)
  return float(np.sum(s / (s + float(reg))))
