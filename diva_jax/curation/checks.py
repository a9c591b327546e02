"""Boundary validation of the curation functions: each checks its own arguments, by name,
before computing anything (the core's messages speak of "weights", which most lack)."""

from __future__ import annotations

import numbers
from typing import Optional

import jax
import numpy as np

from diva_jax.loo import checks as _checks

__all__ = ["check_int", "check_real", "check_reg", "check_loss", "check_array", "check_mask",
           "check_data", "float_dtype", "check_weights", "check_groups"]


def check_int(name: str, value, minimum: int) -> int:
  """`value` must be an integral number (int, np.int64, ...; not bool) >= minimum."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} "
                     f"({type(value).__name__}).")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_real(name: str, value, *, positive: bool = False) -> float:
  """`value` must be a finite real scalar (not bool or str); > 0 when `positive`."""
  if isinstance(value, jax.core.Tracer):  # under a user's trace: values unknown
    return value
  if not isinstance(value, (str, bytes)) and np.ndim(value) != 0:
    raise ValueError(f"{name} must be a real scalar, got an array of shape "
                     f"{np.shape(value)}.")
  kind = np.asarray(value).dtype.kind if not isinstance(value, (str, bytes)) else "U"
  if isinstance(value, (bool, np.bool_)) or kind not in "iuf":
    raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
  v = float(np.asarray(value))
  if not np.isfinite(v) or (positive and v <= 0):
    raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {v}.")
  return v


def check_reg(reg) -> None:
  """The core's reg check (`diva_jax.loo.checks.check_reg`): a real scalar, if concrete > 0."""
  _checks.check_reg(reg)


def check_loss(loss, temperature) -> None:
  """The core's loss and temperature checks (`diva_jax.loo.checks.check_loss_args`)."""
  _checks.check_loss_args(loss, temperature)


def check_array(name: str, x, shape_doc: str, ndim: int, *, finite: bool = True,
                 kinds: str = "iuf") -> np.ndarray:
  """A numeric array of `ndim` dims (dtype kind in `kinds`), finite when `finite`."""
  arr = np.asarray(x)
  if arr.ndim != ndim:
    raise ValueError(f"{name} must have shape {shape_doc}, got shape {arr.shape}.")
  if arr.dtype.kind not in kinds:
    what = "a floating-point" if kinds == "f" else "a numeric"
    raise ValueError(f"{name} must be {what} array, got dtype {arr.dtype}.")
  if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
    bad = np.flatnonzero(~np.isfinite(arr.ravel()))
    raise ValueError(f"{name} must be finite, but {bad.size} of its {arr.size} entries are "
                     f"NaN or Inf (first at flat index {int(bad[0])}).")
  return arr


def check_mask(name: str, mask, n: int) -> np.ndarray:
  """[n] bool, or numbers that are all 0 or 1  ->  [n] bool."""
  arr = np.asarray(mask)
  if arr.shape != (n,):
    raise ValueError(f"{name} must have shape [n] = ({n},), got shape {arr.shape}.")
  if arr.dtype.kind == "b":
    return arr
  if arr.dtype.kind not in "iuf":
    raise ValueError(f"{name} must be a bool array (or 0/1 values), got dtype {arr.dtype}.")
  bad = np.flatnonzero((arr != 0) & (arr != 1))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"{name} must be a bool array (or 0/1 values), got dtype {arr.dtype} "
                     f"with {name}[{i}] = {arr[i]}.")
  return arr.astype(bool)


def check_data(targets, features, kernel) -> int:
  """targets [n, c] with exactly one of features [n, d] / kernel [n, n]; returns n.

  Only shapes and kinds (the core checks values): its messages compare with `weights`,
  an argument `extend` / `reweight_groups` / `tune_augmentations` do not have.
  """
  _checks.check_one_of(features, kernel)
  ts = np.shape(targets)
  if len(ts) != 2:
    hint = " (for a single output use targets[:, None])" if len(ts) == 1 else ""
    raise ValueError(f"targets must have shape [n, c], got shape {ts}{hint}.")
  n = ts[0]
  if features is not None:
    fs = np.shape(features)
    if len(fs) != 2 or fs[0] != n:
      raise ValueError(f"features must have shape [n, d] with n = {n} (the rows of targets), "
                       f"got shape {fs}.")
  else:
    ks = np.shape(kernel)
    if ks != (n, n):
      raise ValueError(f"kernel must have shape [n, n] = ({n}, {n}) (n = the rows of "
                       f"targets), got shape {ks}.")
  return n


def float_dtype(features, kernel, targets) -> np.dtype:
  """The dtype the core computes in (`diva_jax.loo.checks.float_dtype`, the one rule): that
  of features / kernel, else targets, when floating; else JAX's default float."""
  return np.dtype(_checks.float_dtype(features if features is not None else kernel, targets))


def check_weights(name: str, weights, n: int, dtype) -> np.ndarray:
  """[n] finite weights >= 0 (bool / int / float), cast to the float `dtype`."""
  w = check_array(name, weights, f"[n] = ({n},)", 1, kinds="biuf")
  if w.shape != (n,):
    raise ValueError(f"{name} must have shape [n] = ({n},) (n = the rows of targets), got "
                     f"shape {w.shape}.")
  w = w.astype(dtype)
  if np.any(w < 0):
    i = int(np.argmin(w))
    raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {w[i]}.")
  return w


def check_groups(groups, num_groups, n: Optional[int], name_n: str = "n"):
  """groups: [n] ints in [0, num_groups) (num_groups default max + 1). (groups, g)."""
  groups = np.asarray(groups)
  if n is not None and groups.shape != (n,):
    raise ValueError(f"groups must have shape [{name_n}] = ({n},), got shape {groups.shape}.")
  if groups.ndim != 1:
    raise ValueError(f"groups must have shape [n], got shape {groups.shape}.")
  if groups.dtype.kind not in "iu":
    raise ValueError(f"groups must be an integer array, got dtype {groups.dtype}.")
  if num_groups is not None:
    num_groups = check_int("num_groups", num_groups, 1)
  if groups.size:
    lo, hi = int(groups.min()), int(groups.max())
    limit = num_groups if num_groups is not None else hi + 1
    if lo < 0 or hi >= limit:
      bound = f"num_groups = {num_groups}" if num_groups is not None else "num_groups"
      raise ValueError(f"groups must be integers in [0, {bound}), got values in "
                       f"[{lo}, {hi}].")
    g = limit
  else:
    if num_groups is None:
      raise ValueError("groups is empty: pass num_groups.")
    g = num_groups
  return groups, g
