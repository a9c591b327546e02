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

__all__ = [
    "is_concrete",
    "check_finite",
    "check_ridge_inputs",
    "check_reg",
    "float_dtype",
    "raise_if_nonfinite",
]


def is_concrete(x: Any) -> bool:
  """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


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


def check_reg(reg) -> None:
  """`reg` must be a scalar; if concrete, finite and > 0."""
  if np.ndim(reg) != 0:
    raise ValueError(f"reg must be a scalar, got an array of shape {_shape(reg)}.")
  if is_concrete(reg):
    value = float(np.asarray(reg))
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f"reg must be a finite number > 0, got {value}.")


def _check_float(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}.")


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
  if (features is None) == (kernel is None):
    got = "both" if features is not None else "neither"
    raise ValueError(
        f"Pass exactly one of features= ([n, d], primal form) or kernel= ([n, n], dual "
        f"form); got {got}.")
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
    if is_concrete(eval_mask) and not np.any(np.asarray(eval_mask)):
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
  return n


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
      "conditioning). Use a larger reg (diva_jax.select_reg picks one), or compute in float64 "
      "(JAX_ENABLE_X64=1 and float64 inputs).")
