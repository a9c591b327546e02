"""Streaming primal LOO: value and dataset derivative with features in row blocks.

For n far beyond what an n x n kernel (or even two copies of Z) allows: n = 1,000,000 rows
of d = 1,024 features. The features come block by block from memory, from a `.npy` file on
disk (memory-mapped, e.g. the feature cache) or from a function (e.g. a backbone computing
them on the fly); only O(block_size d + d^2) is held besides the per-sample outputs.

Three passes over the rows (same maths as `diva_jax.loo`, in feature space):

  pass 1:  G = Z^T A Z + reg I = U^T U,  Z^T A Y  ->  C = G^-1,  W = C Z^T A Y   [d, d], [d, c]
  pass 2:  per block: S_kk = ||U^-T z_k||^2, Yhat_k = z_k^T W, h, f_loo, e, g, u;
           accumulate M = Z^T diag(a u) Z and Z^T G~                             [d, d], [d, c]
           then Q = C M C, v = C Z^T G~
  pass 3:  per block: dL/da_k = <r_k, z_k^T v> + u_k S_kk - z_k^T Q z_k

On one CPU device the passes run in SciPy's BLAS (`diva_jax._host`), every product symmetric
or triangular: G and M by ?syrk (M over the rows of each sign of a u), S_kk by ?trsm,
z_k^T Q z_k = 2 z_k^T V z_k with V Q's upper triangle (diagonal halved) by ?trmm: 4 n d^2
flops in all (+ O(n d c + d^3)), where one general product Z^T W is 2 n d^2. The XLA passes
(GPU, TPU, a mesh) use GEMMs, 6 n d^2 for the squared error and 8 n d^2 otherwise; every
block has the same shape there (the last one is zero-padded with zero weight), so each pass
compiles once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax import _blas
from diva_jax import _checks
from diva_jax import _host
from diva_jax import loo as _loo

__all__ = [
    "BlockSource",
    "ArraySource",
    "FunctionSource",
    "npy_source",
    "StreamedResult",
    "streamed_loo_loss_and_derivative",
]

_dot = _loo._dot


class BlockSource(Protocol):
  """Rows of a feature matrix, read in blocks."""
  num_rows: int
  num_features: int
  dtype: Any

  def read(self, start: int, stop: int) -> Any:
    """Rows [start, stop) as an array [stop - start, num_features]."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory or memory-mapped array [n, d] (numpy, np.memmap or jax)."""
  array: Any

  @property
  def num_rows(self) -> int:
    return int(self.array.shape[0])

  @property
  def num_features(self) -> int:
    return int(self.array.shape[1])

  @property
  def dtype(self):
    return np.dtype(self.array.dtype)

  def read(self, start: int, stop: int):
    return self.array[start:stop]


@dataclasses.dataclass(frozen=True)
class FunctionSource:
  """Rows computed on demand by `fn(start, stop) -> [stop - start, d]`."""
  fn: Callable[[int, int], Any]
  num_rows: int
  num_features: int
  dtype: Any = np.float32

  def read(self, start: int, stop: int):
    return self.fn(start, stop)


def npy_source(path: str | os.PathLike) -> ArraySource:
  """A `.npy` file of shape [n, d], memory-mapped (read block by block, never whole)."""
  arr = np.load(path, mmap_mode="r")
  if arr.ndim != 2:
    raise ValueError(f"{path}: expected a 2-D [n, d] array, got shape {arr.shape}.")
  return ArraySource(arr)


class StreamedResult(NamedTuple):
  """Value and dataset derivative from `streamed_loo_loss_and_derivative`."""
  loss: float
  derivative: np.ndarray  # [n]
  loo_predictions: Optional[np.ndarray]  # [n, c] when asked for


# ----------------------------------------------------------------------------------------
# Per-block kernels (jitted once per block shape).
# ----------------------------------------------------------------------------------------


# The XLA passes (GPU, TPU, or rows sharded over a mesh); diva_jax._host has the same
# passes in NumPy/SciPy BLAS for one CPU device.


def _pass1(z, a, y):
  za = z * a[:, None]
  return _dot(za.T, z), _dot(za.T, y)


def _pass2(z, a, y, m, c_inv, coef, temperature, denom, loss):
  p = _dot(z, c_inv)
  s_diag = jnp.sum(p * z, axis=1)
  fitted = _dot(z, coef)
  h = a * s_diag
  omh = 1.0 - h
  preds = (fitted - h[:, None] * y) / omh[:, None]
  per = lambda f: jnp.sum(m * _loo._per_sample_loss(loss, f, y, temperature))
  value, g = jax.value_and_grad(per)(preds)
  g = g / denom
  err = preds - y
  g_tilde = g / omh[:, None]
  u = jnp.sum(g * err, axis=1) / omh
  zau = z * (a * u)[:, None]
  return (value / denom, _dot(zau.T, z), _dot(z.T, g_tilde), s_diag, u, y - fitted, preds)


def _pass3(z, resid, s_diag, u, q, v):
  term1 = jnp.sum(resid * _dot(z, v), axis=1)
  term3 = jnp.sum(_dot(z, q) * z, axis=1)
  return term1 + u * s_diag - term3


_pass1_jit = jax.jit(_pass1)
_pass2_jit = jax.jit(_pass2, static_argnames=("loss",))
_pass3_jit = jax.jit(_pass3)


@jax.jit
def _solve_stage(gram, zay, reg):
  d = gram.shape[0]
  chol = jnp.linalg.cholesky(gram + reg * jnp.eye(d, dtype=gram.dtype))
  c_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=gram.dtype))
  c_inv = 0.5 * (c_inv + c_inv.T)
  return c_inv, _dot(c_inv, zay)


@jax.jit
def _grad_stage(c_inv, m, ztg):
  return _dot(c_inv, _dot(m, c_inv)), _dot(c_inv, ztg)


def _blocks(n, block_size):
  for start in range(0, n, block_size):
    yield start, min(start + block_size, n)


def streamed_loo_loss_and_derivative(
    weights, targets, source: BlockSource | Any, *, reg: float, loss: str = "mse",
    eval_mask=None, temperature: float = 1.0, block_size: int = 8192,
    dtype=None, mesh: Optional[jax.sharding.Mesh] = None, data_axis: str = "data",
    return_predictions: bool = False,
    progress: Optional[Callable[[int, int, int], None]] = None) -> StreamedResult:
  """LOO loss and dataset derivative of weighted ridge, streaming feature blocks.

  Equal (up to round-off) to `diva_jax.loo_loss_and_derivative(weights, targets,
  features=Z, ...)`, without holding Z: memory is O(block_size d + d^2) plus the outputs.

  Args:
    weights: [n] sample weights >= 0 (in memory).
    targets: [n, c] targets (in memory).
    source: a `BlockSource` (`ArraySource`, `FunctionSource`, `npy_source(path)`) or any
      [n, d] array-like (numpy, np.memmap, jax).
    reg: ridge strength > 0.
    loss, eval_mask, temperature: as in `diva_jax.loo_loss`.
    block_size: rows per block (a multiple of the mesh size when `mesh` is given).
    dtype: compute dtype (default: the source's floating dtype, else float32).
    mesh: optional mesh; each block's rows are sharded over `data_axis` and the Gram-type
      products are reduced across its devices (jit + NamedSharding).
    return_predictions: also return the [n, c] LOO predictions.
    progress: called as progress(rows_done, n, pass_index) after each block (pass 1..3).

  Returns:
    A `StreamedResult` (loss, derivative [n], loo_predictions or None).
  """
  if not hasattr(source, "read"):
    if np.ndim(source) != 2:
      raise ValueError(f"source must be a BlockSource or an [n, d] array, got shape "
                       f"{np.shape(source)}.")
    source = ArraySource(source)
  n, d = int(source.num_rows), int(source.num_features)
  if loss not in _loo.LOSSES:
    raise ValueError(f"loss must be one of {_loo.LOSSES}, got {loss!r}.")
  # Shape/value checks on everything except the (streamed) features.
  _checks.check_ridge_inputs(weights, targets, np.zeros((np.shape(weights)[0], 0)), None,
                             reg, eval_mask)
  if np.shape(weights)[0] != n:
    raise ValueError(f"weights has {np.shape(weights)[0]} entries but the source has {n} rows.")
  if not (isinstance(block_size, int) and block_size >= 1):
    raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
  if not float(temperature) > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  if dtype is None:
    dtype = source.dtype if np.issubdtype(np.dtype(source.dtype), np.floating) else np.float32
  dtype = jnp.dtype(dtype)
  block_size = min(block_size, n)

  shard = replicate = lambda x: x
  # On one CPU device the passes run in NumPy/SciPy BLAS directly (diva_jax._host): the
  # blocks are host arrays already, OpenBLAS is faster than XLA:CPU, and Gram matrices get
  # symmetric rank-k updates. With a mesh (or DIVA_HOST_BLAS=0) the jitted XLA passes run.
  host = (mesh is None and _blas.enabled()
          and jax.devices()[0].platform == "cpu")
  if mesh is not None:
    ndev = mesh.shape[data_axis]
    block_size = -(-block_size // ndev) * ndev
    row_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    rep_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shard = lambda x: jax.device_put(x, row_sharding)
    replicate = lambda x: jax.device_put(x, rep_sharding)

  w_all = np.asarray(weights, dtype)
  y_all = np.asarray(targets, dtype)
  c = y_all.shape[1]
  m_all = (np.ones(n, dtype) if eval_mask is None else np.asarray(eval_mask).astype(dtype))
  denom = replicate(jnp.asarray(m_all.sum(), dtype))
  temp = replicate(jnp.asarray(temperature, dtype))

  def nonfinite(start, stop):
    return ValueError(f"features rows [{start}, {stop}) contain NaN or Inf.")

  def block(start, stop):
    """Features, weights, targets, mask of rows [start, stop), zero-padded to block_size
    (host arrays on the host path, device arrays otherwise)."""
    z = np.asarray(source.read(start, stop), dtype)
    if z.shape != (stop - start, d):
      raise ValueError(f"source.read({start}, {stop}) returned shape {z.shape}, expected "
                       f"{(stop - start, d)}.")
    # The host passes check their (small) outputs instead: a non-finite feature makes them
    # non-finite, and a scan of every block costs a pass over the features.
    if not host and not np.all(np.isfinite(z)):
      raise nonfinite(start, stop)
    pad = block_size - (stop - start)
    parts = (z, w_all[start:stop], y_all[start:stop], m_all[start:stop])
    if host:
      return parts  # no padding needed: nothing is compiled
    if pad:
      parts = tuple(np.concatenate([p, np.zeros((pad,) + p.shape[1:], dtype)]) for p in parts)
    return tuple(shard(jnp.asarray(p)) for p in parts)

  def tick(stop, k):
    if progress is not None:
      progress(stop, n, k)

  # Pass 1: Gram-type products.
  gram = jnp.zeros((d, d), dtype)
  zay = jnp.zeros((d, c), dtype)
  if host:  # Gram matrix: upper triangle, Fortran-ordered, accumulated in place by ?syrk
    gram, zay = np.zeros((d, d), dtype, order="F"), np.zeros((d, c), dtype)
    scratch = np.empty((block_size, d), dtype)  # the scaled rows of one block
  for start, stop in _blocks(n, block_size):
    z, a, y, _ = block(start, stop)
    if host:
      zay = _host.stream_pass1(z, a, y, gram, zay, buf=scratch)
      if not np.all(np.isfinite(zay)):
        if np.all(np.isfinite(z)):
          raise ValueError(f"Z^T A Y overflows {dtype} at rows [{start}, {stop}): rescale the "
                           "features or targets, or use dtype=float64.")
        raise nonfinite(start, stop)
    else:
      g_b, zy_b = _pass1_jit(z, a, y)
      gram, zay = gram + g_b, zay + zy_b
    tick(stop, 1)
  if host and not np.all(np.isfinite(gram)):  # finite features (checked) whose Gram overflows
    raise ValueError(f"Z^T A Z overflows {dtype}: rescale the features, or use "
                     "dtype=float64.")
  if host:
    solved = _host.stream_solve(gram, zay, dtype.type(reg))
    if solved is None:
      _checks.raise_if_nonfinite(np.asarray([np.nan], dtype), reg, "streamed factorisation")
    chol, c_inv, coef = solved
  else:
    c_inv, coef = _solve_stage(gram, zay, jnp.asarray(reg, dtype))
  if not bool(jnp.all(jnp.isfinite(c_inv))):
    _checks.raise_if_nonfinite(np.asarray(c_inv), reg, "streamed factorisation")

  # Pass 2: per-sample quantities, and M = Z^T diag(a u) Z, Z^T G~.
  s_all = np.empty(n, dtype)
  u_all = np.empty(n, dtype)
  r_all = np.empty((n, c), dtype)
  preds_all = np.empty((n, c), dtype) if return_predictions else None
  xp = np if host else jnp
  m_acc = np.zeros((d, d), dtype, order="F") if host else jnp.zeros((d, d), dtype)
  ztg = xp.zeros((d, c), dtype)
  value = xp.zeros((), dtype)
  for start, stop in _blocks(n, block_size):
    z, a, y, msk = block(start, stop)
    if host:  # m_acc (upper triangle) is accumulated in place
      v_b, g_b, s_b, u_b, r_b, p_b = _host.stream_pass2(
          z, a, y, msk, chol, coef, dtype.type(temperature), m_all.sum(), loss, m_acc,
          buf=scratch, with_preds=preds_all is not None)
      if not np.all(np.isfinite(s_b)):
        raise nonfinite(start, stop)
    else:
      v_b, m_b, g_b, s_b, u_b, r_b, p_b = _pass2_jit(z, a, y, msk, c_inv, coef, temp, denom,
                                                      loss=loss)
      m_acc = m_acc + m_b
    value, ztg = value + v_b, ztg + g_b
    k = stop - start
    s_all[start:stop] = np.asarray(s_b)[:k]
    u_all[start:stop] = np.asarray(u_b)[:k]
    r_all[start:stop] = np.asarray(r_b)[:k]
    if preds_all is not None:
      preds_all[start:stop] = np.asarray(p_b)[:k]
    tick(stop, 2)
  if host:
    del scratch
  if host:  # q: Q's upper triangle, diagonal halved (for the triangular product)
    q, v = _host.stream_grad_stage(c_inv, m_acc, ztg)
  else:
    q, v = _grad_stage(c_inv, m_acc, ztg)

  # Pass 3: the derivative.
  deriv = np.empty(n, dtype)
  for start, stop in _blocks(n, block_size):
    z = block(start, stop)[0]
    k = stop - start
    if host:
      deriv[start:stop] = _host.stream_pass3(z, r_all[start:stop], s_all[start:stop],
                                             u_all[start:stop], q, v)
      tick(stop, 3)
      continue
    pad = block_size - k
    pad_rows = lambda x: np.concatenate([x, np.zeros((pad,) + x.shape[1:], dtype)]) if pad else x
    out = _pass3_jit(z, shard(jnp.asarray(pad_rows(r_all[start:stop]))),
                     shard(jnp.asarray(pad_rows(s_all[start:stop]))),
                     shard(jnp.asarray(pad_rows(u_all[start:stop]))), q, v)
    deriv[start:stop] = np.asarray(out)[:k]
    tick(stop, 3)
  result = StreamedResult(float(value), deriv, preds_all)
  if not (np.isfinite(result.loss) and np.all(np.isfinite(deriv))):
    _checks.raise_if_nonfinite(np.asarray([np.nan], dtype), reg, "streamed dataset derivative")
  return result
