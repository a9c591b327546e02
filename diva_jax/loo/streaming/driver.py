"""Streaming primal LOO: value and dataset derivative with features in row blocks.

For n far beyond what an n x n kernel (or even two copies of Z) allows: n = 1,000,000 rows
of d = 1,024 features. The features come block by block from memory, from a `.npy` file on
disk (memory-mapped, e.g. the feature cache) or from a function (e.g. a backbone computing
them on the fly); only O(block_size d + d^2) is held besides the per-sample outputs.

Three passes over the rows (same maths as `diva_jax.loo.api`, in feature space):

  pass 1:  G = Z^T A Z + reg I = U^T U,  Z^T A Y  ->  C = G^-1,  W = C Z^T A Y   [d, d], [d, c]
  pass 2:  per block: S_kk = z_k^T C z_k, Yhat_k = z_k^T W, h, f_loo, e, g, u;
           accumulate M = Z^T diag(a u) Z and Z^T G~                             [d, d], [d, c]
           then Q = C M C, v = C Z^T G~
  pass 3:  per block: dL/da_k = <r_k, z_k^T v> + u_k S_kk - z_k^T Q z_k

This module holds the block sources and the driver; the passes themselves are
`diva_jax.loo.streaming.host` (SciPy BLAS, every product symmetric or triangular: 4 n d^2 flops
in all) and `diva_jax.loo.streaming.xla` (jitted GEMMs, for GPU, TPU and a mesh; every block has
the same shape, so each pass compiles once). `diva_jax.loo.backends.dispatch` picks one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.loo import checks as _checks
from diva_jax.loo.streaming import host as _stream_host
from diva_jax.loo.streaming import xla as _stream_xla
from diva_jax.loo.backends import dispatch as _backend
from diva_jax.loo import closed_form as cf
from diva_jax.loo.results import LooResult

__all__ = [
    "BlockSource",
    "ArraySource",
    "FunctionSource",
    "NpyFileSource",
    "npy_source",
    "streamed_loo_loss_and_derivative",
]


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


class NpyFileSource:
  """A C-ordered `.npy` file [n, d] read block by block with plain file reads: unlike a
  memory map, the pages read do not stay in the process (its resident memory stays
  O(block), whatever the file's size)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    with open(self.path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                     np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read_header(f)
      self._offset = f.tell()
    if len(shape) != 2:
      raise ValueError(f"{self.path}: expected a 2-D [n, d] array, got shape {shape}.")
    if fortran or dtype.hasobject:
      raise ValueError(f"{self.path}: a C-ordered numeric array is needed for file reads.")
    self.shape, self._dtype = tuple(int(v) for v in shape), np.dtype(dtype)
    expected = self._offset + self.shape[0] * self.shape[1] * self._dtype.itemsize
    if os.path.getsize(self.path) < expected:
      raise ValueError(f"{self.path}: the file is truncated ({os.path.getsize(self.path)} "
                       f"bytes, its header says shape {self.shape} needs {expected}).")

  @property
  def num_rows(self) -> int:
    return self.shape[0]

  @property
  def num_features(self) -> int:
    return self.shape[1]

  @property
  def dtype(self):
    return self._dtype

  def read(self, start: int, stop: int):
    start, stop = max(0, int(start)), min(int(stop), self.shape[0])
    out = np.empty((max(stop - start, 0), self.shape[1]), self._dtype)
    row = self.shape[1] * self._dtype.itemsize
    with open(self.path, "rb", buffering=0) as f:
      f.seek(self._offset + start * row)
      view, got = memoryview(out).cast("B"), 0
      while got < out.nbytes:
        k = f.readinto(view[got:])
        if not k:
          raise ValueError(f"{self.path}: unexpected end of file at row {start}.")
        got += k
    return out


def npy_source(path: str | os.PathLike):
  """A `.npy` file of shape [n, d], read block by block, never whole: by file reads
  (`NpyFileSource`) when it is C-ordered, else memory-mapped (`ArraySource`)."""
  arr = np.load(path, mmap_mode="r")
  if arr.ndim != 2:
    raise ValueError(f"{path}: expected a 2-D [n, d] array, got shape {arr.shape}.")
  if arr.flags.c_contiguous and not arr.dtype.hasobject:
    del arr
    return NpyFileSource(path)
  return ArraySource(arr)


def _blocks(n, block_size):
  for start in range(0, n, block_size):
    yield start, min(start + block_size, n)


class _Problem:
  """The in-memory inputs of a streamed run and its block reader."""

  def __init__(self, source, weights, targets, eval_mask, dtype, block_size, check_blocks,
               outer="mean"):
    self.source, self.dtype, self.block_size = source, dtype, block_size
    self.n, self.d = int(source.num_rows), int(source.num_features)
    self.w = np.asarray(weights, dtype)
    self.y = np.asarray(targets, dtype)
    self.m = np.ones(self.n, dtype) if eval_mask is None else np.asarray(eval_mask).astype(dtype)
    self.outer = outer
    self.m_out = cf.outer_mask(self.w, self.m, outer)  # the outer mean's weights
    self.denom = self.m_out.sum()  # their total, the outer mean's denominator
    self.check_blocks = check_blocks

  def add_self_term(self, deriv, per, value):
    """The weighted outer mean's own-sample term, added in place after pass 3."""
    if self.outer == "weighted":
      deriv += cf.self_term(self.m, per, self.dtype.type(value), self.denom)

  def nonfinite(self, start, stop):
    return ValueError(f"features rows [{start}, {stop}) contain NaN or Inf.")

  def read(self, start, stop):
    z = np.asarray(self.source.read(start, stop), self.dtype)
    if z.shape != (stop - start, self.d):
      raise ValueError(f"source.read({start}, {stop}) returned shape {z.shape}, expected "
                       f"{(stop - start, self.d)}.")
    if self.check_blocks and not np.all(np.isfinite(z)):
      raise self.nonfinite(start, stop)
    return z


def _check_f32(p: _Problem, gram, s_all, reg) -> None:
  """The primal float32 bound (`closed_form.f32_bound`) with the exact condition number of
  G + reg I (the passes apply its explicit inverse), after pass 2: a float32 stream that
  fails it is refused (redoing it in float64 would read the source again)."""
  if p.dtype == np.float32:
    w = np.asarray(p.w, np.float64)
    bound = cf.f32_bound(np, cf.eig_kappa(gram, reg), w,
                         1.0 - w * np.asarray(s_all, np.float64))
    if not bound <= cf.F32_TOL:
      raise cf.f32_refusal(bound, reg, "streamed problem")


def _host_driver(p: _Problem, reg, loss, temperature, with_preds, tick):
  """The three passes in SciPy BLAS on host blocks (no padding: nothing is compiled).
  Non-finite features show in the passes' small outputs, which are checked instead of a scan
  of every block."""
  n, d, dtype = p.n, p.d, p.dtype
  c = p.y.shape[1]
  gram, zay = np.zeros((d, d), dtype, order="F"), np.zeros((d, c), dtype)
  scratch = np.empty((p.block_size, d), dtype)  # the scaled rows of one block
  for start, stop in _blocks(n, p.block_size):
    z = p.read(start, stop)
    zay = _stream_host.stream_pass1(z, p.w[start:stop], p.y[start:stop], gram, zay, buf=scratch)
    if not np.all(np.isfinite(zay)):
      if np.all(np.isfinite(z)):
        raise ValueError(f"Z^T A Y overflows {dtype} at rows [{start}, {stop}): rescale the "
                         "features or targets, or use dtype=float64.")
      raise p.nonfinite(start, stop)
    tick(1, stop)
  if not np.all(np.isfinite(gram)):  # finite features (checked) whose Gram overflows
    raise ValueError(f"Z^T A Z overflows {dtype}: rescale the features, or use dtype=float64.")
  solved = _stream_host.stream_solve(gram, zay, dtype.type(reg))
  if solved is None or not np.all(np.isfinite(solved[1])):
    _checks.raise_if_nonfinite(np.asarray([np.nan], dtype), reg, "streamed factorisation")
  chol, c_inv, coef = solved
  s_all, u_all = np.empty(n, dtype), np.empty(n, dtype)
  r_all = np.empty((n, c), dtype)
  preds_all = np.empty((n, c), dtype) if with_preds else None
  m_acc = np.zeros((d, d), dtype, order="F")
  ztg, value = np.zeros((d, c), dtype), dtype.type(0)
  per_all = np.empty(n, dtype)
  for start, stop in _blocks(n, p.block_size):
    z = p.read(start, stop)
    sl = slice(start, stop)
    v_b, g_b, s_all[sl], u_all[sl], r_all[sl], p_b, per_all[sl] = _stream_host.stream_pass2(
        z, p.w[sl], p.y[sl], p.m_out[sl], chol, coef, dtype.type(temperature), p.denom,
        loss, m_acc, buf=scratch, with_preds=with_preds)
    if not np.all(np.isfinite(s_all[sl])):
      raise p.nonfinite(start, stop)
    value, ztg = value + v_b, ztg + g_b
    if with_preds:
      preds_all[sl] = p_b
    tick(2, stop)
  del scratch
  _check_f32(p, gram, s_all, reg)  # gram: its upper triangle
  q, v = _stream_host.stream_grad_stage(c_inv, m_acc, ztg)  # Q's triangle, diagonal halved
  deriv = np.empty(n, dtype)
  for start, stop in _blocks(n, p.block_size):
    sl = slice(start, stop)
    deriv[sl] = _stream_host.stream_pass3(p.read(start, stop), r_all[sl], s_all[sl], u_all[sl],
                                          q, v)
    tick(3, stop)
  p.add_self_term(deriv, per_all, value)
  return value, deriv, preds_all


def _xla_driver(p: _Problem, reg, loss, temperature, with_preds, tick, mesh, data_axis):
  """The three passes as jitted XLA; with a mesh, each block's rows are sharded over
  `data_axis` and the Gram-type products reduced across its devices."""
  n, d, dtype, bs = p.n, p.d, p.dtype, p.block_size
  c = p.y.shape[1]
  shard = replicate = jnp.asarray
  if mesh is not None:
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shard = lambda x: jax.device_put(x, rows)
    replicate = lambda x: jax.device_put(x, rep)

  def padded(*parts):
    k = parts[0].shape[0]
    return tuple(shard(np.concatenate([x, np.zeros((bs - k,) + x.shape[1:], dtype)])
                       if k < bs else x) for x in parts)

  def block(start, stop):
    return padded(p.read(start, stop), p.w[start:stop], p.y[start:stop], p.m_out[start:stop])

  gram, zay = jnp.zeros((d, d), dtype), jnp.zeros((d, c), dtype)
  for start, stop in _blocks(n, bs):
    z, a, y, _ = block(start, stop)
    g_b, zy_b = _stream_xla.pass1(z, a, y)
    gram, zay = gram + g_b, zay + zy_b
    tick(1, stop)
  c_inv, coef = _stream_xla.solve_stage(gram, zay, jnp.asarray(reg, dtype))
  if not bool(jnp.all(jnp.isfinite(c_inv))):
    _checks.raise_if_nonfinite(np.asarray(c_inv), reg, "streamed factorisation")
  denom = replicate(jnp.asarray(p.denom, dtype))
  temp = replicate(jnp.asarray(temperature, dtype))
  s_all, u_all = np.empty(n, dtype), np.empty(n, dtype)
  r_all = np.empty((n, c), dtype)
  preds_all = np.empty((n, c), dtype) if with_preds else None
  per_all = np.empty(n, dtype)
  m_acc, ztg, value = jnp.zeros((d, d), dtype), jnp.zeros((d, c), dtype), jnp.zeros((), dtype)
  for start, stop in _blocks(n, bs):
    z, a, y, msk = block(start, stop)
    v_b, m_b, g_b, s_b, u_b, r_b, p_b, per_b = _stream_xla.pass2(z, a, y, msk, c_inv, coef,
                                                                 temp, denom, loss=loss)
    m_acc, value, ztg = m_acc + m_b, value + v_b, ztg + g_b
    k = stop - start
    s_all[start:stop], u_all[start:stop] = np.asarray(s_b)[:k], np.asarray(u_b)[:k]
    per_all[start:stop] = np.asarray(per_b)[:k]
    r_all[start:stop] = np.asarray(r_b)[:k]
    if with_preds:
      preds_all[start:stop] = np.asarray(p_b)[:k]
    tick(2, stop)
  _check_f32(p, np.asarray(gram), s_all, reg)
  q, v = _stream_xla.grad_stage(c_inv, m_acc, ztg)
  deriv = np.empty(n, dtype)
  for start, stop in _blocks(n, bs):
    sl = slice(start, stop)
    out = _stream_xla.pass3(*padded(p.read(start, stop), r_all[sl], s_all[sl], u_all[sl]), q, v)
    deriv[sl] = np.asarray(out)[:stop - start]
    tick(3, stop)
  p.add_self_term(deriv, per_all, value)
  return value, deriv, preds_all


def streamed_loo_loss_and_derivative(
    weights, targets, *, features: BlockSource | Any, reg: float, loss: str = "mse",
    eval_mask=None, temperature: float = 1.0, block_size: int = 8192,
    dtype=None, mesh: Optional[jax.sharding.Mesh] = None, data_axis: str = "data",
    backend: str = "auto", return_predictions: bool = False,
    progress: Optional[Callable[[int, int], None]] = None, outer: str = "mean"):
  """LOO loss and dataset derivative of weighted ridge, streaming feature blocks.

  Equal (up to round-off) to `diva_jax.loo_loss_and_derivative(weights, targets,
  features=Z, ...)`, without holding Z: memory is O(block_size d + d^2) plus the outputs.

  Args:
    weights: [n] sample weights >= 0 (in memory).
    targets: [n, c] targets (in memory).
    features: a `BlockSource` (`ArraySource`, `FunctionSource`, `npy_source(path)`) or any
      [n, d] array-like (numpy, np.memmap, jax).
    reg: ridge strength > 0.
    loss, eval_mask, temperature: as in `diva_jax.loo_loss`.
    block_size: rows per block (rounded up to a multiple of the mesh size with `mesh`).
    dtype: compute dtype (default: the source's floating dtype, else float32). In float32
      both backends check the in-memory primal's accuracy bound after the second pass and
      raise (asking for float64) when it fails.
    mesh: optional mesh; each block's rows are sharded over `data_axis` and the Gram-type
      products are reduced across its devices (jit + NamedSharding; XLA backend).
    backend: "auto" (host BLAS on a CPU default backend without a mesh, else XLA), "host"
      or "xla"; see `diva_jax.loo.backends.dispatch`.
    return_predictions: also return the [n, c] LOO predictions.
    progress: called as progress(done, total) after each block, total = 3 n (three passes).
    outer: "mean" or "weighted", as in `diva_jax.loo_loss`.

  Returns:
    A `LooResult` (value, derivative [n]) of jax arrays, like every LOO entry point; with
    `return_predictions`, the pair (LooResult, LOO predictions [n, c] NumPy array).
  """
  source = features
  if not hasattr(source, "read"):
    if np.ndim(source) != 2:
      raise ValueError(f"features must be a BlockSource or an [n, d] array, got shape "
                       f"{np.shape(source)}.")
    source = ArraySource(source)
  n = int(source.num_rows)
  if loss not in cf.LOSSES:
    raise ValueError(f"loss must be one of {cf.LOSSES}, got {loss!r}.")
  # Shape/value checks on everything except the (streamed) features.
  _checks.check_ridge_inputs(weights, targets, np.zeros((np.shape(weights)[0], 0)), None,
                             reg, eval_mask)
  _checks.check_loss_args(loss, temperature, targets)
  _checks.check_outer(outer, weights, eval_mask)
  if np.shape(weights)[0] != n:
    raise ValueError(f"weights has {np.shape(weights)[0]} entries but features has {n} rows.")
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
  if mesh is not None and backend == "host":
    raise ValueError("backend='host' runs on one CPU device; a mesh needs backend='xla' or "
                     "'auto'.")
  use_host = _backend.use_host(backend, concrete=True, on_cpu=mesh is None and
                               jax.default_backend() == "cpu")
  if dtype is None:
    dtype = source.dtype if np.issubdtype(np.dtype(source.dtype), np.floating) else np.float32
  dtype = np.dtype(dtype)
  _checks.check_dtype(dtype, "the compute dtype")
  block_size = min(int(block_size), n)
  if mesh is not None:
    ndev = mesh.shape[data_axis]
    block_size = -(-block_size // ndev) * ndev
  p = _Problem(source, weights, targets, eval_mask, dtype, block_size,
               check_blocks=not use_host, outer=outer)
  tick = (lambda k, stop: progress((k - 1) * n + stop, 3 * n)) if progress else (lambda k, s: None)
  if use_host:
    value, deriv, preds = _host_driver(p, reg, loss, temperature, return_predictions, tick)
  else:
    value, deriv, preds = _xla_driver(p, reg, loss, temperature, return_predictions, tick,
                                      mesh, data_axis)
  if not (np.isfinite(float(value)) and np.all(np.isfinite(deriv))):
    _checks.raise_if_nonfinite(np.asarray([np.nan], dtype), reg, "streamed dataset derivative")
  result = LooResult(jnp.asarray(value, dtype), jnp.asarray(deriv))
  return (result, preds) if return_predictions else result
