"""Input validation at the public boundary.

Shape and dtype checks always run (they only read static shapes, so they also work on
tracers under `jax.jit` / `jax.vmap`). Value checks (finiteness, signs, symmetry) run only
when an argument is concrete: inside a user's `jit` the values are unknown, and the caller
is responsible for them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.loo import closed_form as cf

__all__ = [
    "is_concrete",
    "check_finite",
    "check_ridge_inputs",
    "check_reg",
    "check_dtype",
    "check_loss_args",
    "check_outer",
    "float_dtype",
    "raise_if_nonfinite",
]


def is_concrete(x: Any) -> bool:
  """True when `x` holds values this process can read: not a tracer inside jit/vmap/grad,
  nor a global array with rows on other processes' devices (value checks are skipped for
  both, as under jit; `diva_jax.parallel.multihost` checks the host rows before placing them)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def float_dtype(*arrays) -> jnp.dtype:
  """The floating dtype a computation runs in: that of the first floating array.

  Features or kernels set the precision (a float32 kernel runs in float32 even when
  float64 is enabled); integer inputs fall back to JAX's default float.
  """
  for a in arrays:
    if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.floating):
      return jnp.result_type(a)
  return jnp.result_type(float)


def check_finite(name: str, x) -> None:
  """Raises ValueError if a concrete `x` holds NaN or Inf."""
  if x is None or not is_concrete(x):
    return
  arr = np.asarray(x)
  # One allocation-free pass first (a sum is finite when every entry is, unless it
  # overflows); the elementwise test only when it is not.
  if arr.dtype.kind in "fc" and np.isfinite(np.sum(arr)):
    return
  if not np.all(np.isfinite(arr)):
    bad = np.argwhere(~np.isfinite(arr))
    raise ValueError(
        f"{name} must be finite, but {len(bad)} of its {arr.size} entries are NaN or Inf "
        f"(first at index {tuple(int(i) for i in bad[0])}).")


def check_reg(reg, name: str = "reg") -> None:
  """`reg` must be a real scalar (not a str or bool); if concrete, finite and > 0."""
  if isinstance(reg, (str, bytes, bool, np.bool_)) or (
      hasattr(reg, "dtype") and not jnp.issubdtype(reg.dtype, np.number)):
    raise ValueError(f"{name} must be a number > 0, got {reg!r} of type {type(reg).__name__}.")
  if hasattr(reg, "dtype") and jnp.issubdtype(reg.dtype, jnp.bool_):
    raise ValueError(f"{name} must be a number > 0, got a boolean.")
  if np.ndim(reg) != 0:
    raise ValueError(f"{name} must be a scalar, got an array of shape {_shape(reg)}.")
  if is_concrete(reg):
    value = float(np.asarray(reg))
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f"{name} must be a finite number > 0, got {value}.")


def check_dtype(dtype, name: str) -> None:
  """Only float32 and float64 are computed (LAPACK has no half-precision factorisations)."""
  if np.dtype(dtype) not in (np.float32, np.float64):
    raise ValueError(f"{name} must be float32 or float64, got {np.dtype(dtype)}: cast it with "
                     ".astype(np.float32) (float16/bfloat16 cannot be factorised accurately).")


def _check_float(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}.")
  check_dtype(jnp.result_type(x), name)


def check_loss_args(loss, temperature, targets=None) -> None:
  """`loss` in LOSSES; temperature a scalar > 0; for 'ce', targets [n, c >= 2] rows that are
  probabilities (>= 0, summing to 1)."""
  if loss not in ("mse", "ce"):
    raise ValueError(f"loss must be one of ('mse', 'ce'), got {loss!r}.")
  if isinstance(temperature, (str, bytes, bool)) or np.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar > 0, got {temperature!r}.")
  if is_concrete(temperature):
    t = float(np.asarray(temperature))
    if not (np.isfinite(t) and t > 0):
      raise ValueError(f"temperature must be a finite number > 0, got {t}.")
  if loss != "ce" or targets is None:
    return
  if np.ndim(targets) == 2 and _shape(targets)[1] < 2:
    raise ValueError(f"loss='ce' needs targets with c >= 2 classes (probability rows), got "
                     f"shape {_shape(targets)}; use loss='mse' for a single output.")
  if is_concrete(targets) and np.ndim(targets) == 2 and np.size(targets):
    t = np.asarray(targets, np.float64)
    sums = t.sum(axis=1)
    if np.any(t < -1e-6) or not np.allclose(sums, 1.0, atol=1e-4):
      i = int(np.argmax(np.abs(sums - 1.0) + (t.min(axis=1) < 0)))
      raise ValueError(
          "loss='ce' needs targets whose rows are probabilities (>= 0, summing to 1), got "
          f"row {i} = {t[i][:8]} (sum {sums[i]:.4g}); use one-hot labels or loss='mse'.")


def check_one_of(features, kernel) -> None:
  """The one check of every entry point that takes `features=` or `kernel=`: exactly one."""
  if (features is None) == (kernel is None):
    got = "both" if features is not None else "neither"
    raise ValueError(
        f"Pass exactly one of features= ([n, d], primal form) or kernel= ([n, n], dual "
        f"form); got {got}.")


def check_ridge_inputs(weights, targets, features, kernel, reg, eval_mask=None) -> int:
  """Validates the common arguments of the LOO functions; returns n.

  Args:
    weights: [n] non-negative sample weights.
    targets: [n, c] regression targets.
    features: [n, d] or None.
    kernel: [n, n] or None (exactly one of features / kernel).
    reg: scalar > 0.
    eval_mask: [n] bool or None.
  """
  check_one_of(features, kernel)
  if np.ndim(weights) != 1:
    raise ValueError(f"weights must have shape [n], got shape {_shape(weights)}.")
  n = _shape(weights)[0]
  if np.ndim(targets) != 2:
    hint = " (for a single output use targets[:, None])" if np.ndim(targets) == 1 else ""
    raise ValueError(f"targets must have shape [n, c], got shape {_shape(targets)}{hint}.")
  if _shape(targets)[0] != n:
    raise ValueError(
        f"targets has {_shape(targets)[0]} rows but weights has {n} entries: targets shape "
        f"{_shape(targets)} vs weights shape {_shape(weights)}.")
  _check_float("targets", targets)
  if features is not None:
    if np.ndim(features) != 2:
      raise ValueError(f"features must have shape [n, d], got shape {_shape(features)}.")
    if _shape(features)[0] != n:
      raise ValueError(
          f"features has {_shape(features)[0]} rows but weights has {n} entries: features "
          f"shape {_shape(features)} vs weights shape {_shape(weights)}.")
    _check_float("features", features)
  else:
    ks = _shape(kernel)
    if len(ks) != 2 or ks[0] != ks[1]:
      raise ValueError(f"kernel must be a square [n, n] matrix, got shape {ks}.")
    if ks[0] != n:
      raise ValueError(
          f"kernel is {ks[0]} x {ks[1]} but weights has {n} entries: kernel shape {ks} vs "
          f"weights shape {_shape(weights)}.")
    _check_float("kernel", kernel)
  check_reg(reg)
  if eval_mask is not None:
    if _shape(eval_mask) != (n,):
      raise ValueError(f"eval_mask must have shape [n] = ({n},), got shape {_shape(eval_mask)}.")
    if is_concrete(eval_mask):
      em = np.asarray(eval_mask)
      if em.dtype != np.bool_ and not np.all((em == 0) | (em == 1)):
        bad = int(np.flatnonzero((em != 0) & (em != 1))[0])
        raise ValueError(f"eval_mask must be boolean (or 0/1), got eval_mask[{bad}] = "
                         f"{em[bad]}; sample weights belong in weights=.")
      if not np.any(em):
        raise ValueError("eval_mask selects no sample: at least one entry must be True.")

  if is_concrete(weights):
    w = np.asarray(weights)
    if not np.all(np.isfinite(w)):
      raise ValueError("weights must be finite, got NaN or Inf.")
    if np.any(w < 0):
      i = int(np.argmin(w))
      raise ValueError(f"weights must be >= 0, got weights[{i}] = {w[i]}.")
  check_finite("targets", targets)
  check_finite("features", features)
  if kernel is not None and is_concrete(kernel):
    check_finite("kernel", kernel)
    k = np.asarray(kernel)
    scale = float(np.max(np.abs(k))) if k.size else 0.0
    tol = np.sqrt(np.finfo(k.dtype).eps) * max(scale, np.finfo(k.dtype).tiny)
    asym = float(np.max(np.abs(k - k.T))) if k.size else 0.0
    if asym > tol:
      raise ValueError(
          f"kernel must be symmetric: max |K - K^T| = {asym:.3g} exceeds the tolerance "
          f"{tol:.3g} (sqrt(eps) x max |K|). Symmetrise it with (K + K.T) / 2 if the "
          "asymmetry is round-off.")
    _check_psd_necessary(k)
  return n


def check_outer(outer, weights=None, eval_mask=None) -> None:
  """`outer` is one of `closed_form.OUTERS`; for "weighted", the evaluated samples' concrete
  weights must not all be 0 (the weighted outer mean would divide by 0)."""
  cf.check_outer(outer)
  if outer != "weighted" or weights is None or not is_concrete(weights) or (
      eval_mask is not None and not is_concrete(eval_mask)):
    return
  w = np.asarray(weights, np.float64)
  m = np.ones_like(w) if eval_mask is None else np.asarray(eval_mask, np.float64)
  if not np.sum(w * m) > 0:
    raise ValueError("outer='weighted' needs sum_i weights_i * eval_mask_i > 0, got 0: every "
                     "evaluated sample has weight 0.")


def _check_psd_necessary(k) -> None:
  """O(n^2) necessary conditions of positive semi-definiteness: K_ii >= 0 and
  K_ij^2 <= K_ii K_jj (every 2 x 2 principal minor). A full test costs an eigendecomposition;
  a kernel that passes these but is not PSD shows as h outside [0, 1) and is reported then."""
  if not k.size:
    return
  diag = np.diagonal(k).astype(np.float64)
  tol = 100 * np.finfo(k.dtype).eps * max(float(np.max(np.abs(diag))), np.finfo(k.dtype).tiny)
  if np.min(diag) < -tol:
    i = int(np.argmin(diag))
    raise ValueError(f"kernel must be positive semi-definite, but K[{i}, {i}] = {diag[i]:.4g} "
                     "< 0.")
  root = np.sqrt(np.maximum(diag, 0))
  excess = np.abs(k) - (root[:, None] * root[None, :] * (1 + 1e-3) + tol)
  if np.max(excess) > 0:
    i, j = np.unravel_index(int(np.argmax(excess)), k.shape)
    raise ValueError(
        f"kernel must be positive semi-definite, but |K[{i}, {j}]| = {abs(k[i, j]):.4g} exceeds "
        f"sqrt(K[{i},{i}] K[{j},{j}]) = {root[i] * root[j]:.4g}.")


def raise_if_nonfinite(result, reg, what: str = "result"):
  """After a factorisation: a NaN/Inf output means it failed. Never return it silently."""
  leaves = jax.tree_util.tree_leaves(result)
  if not all(is_concrete(x) for x in leaves):
    return result
  if all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves):
    return result
  dtype = leaves[0].dtype
  raise ValueError(
      f"The {what} is not finite: the regularised Gram/kernel matrix could not be factorised "
      f"accurately in {dtype} (reg = {float(np.asarray(reg)):.3g} is too small for its "
      "conditioning), or the kernel is not positive semi-definite. Use a larger reg "
      "(diva_jax.select_reg picks one), or compute in float64 (JAX_ENABLE_X64=1 and float64 "
      "inputs).")
