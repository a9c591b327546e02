"""Multi-process runs on JAX's own multi-controller runtime: start-up, rows per process,
host collectives, and data-parallel feature extraction over every device of every process.

One process per host (TPU pod slice, several GPU hosts, or several processes on one CPU
machine over loopback). :func:`initialize` calls ``jax.distributed.initialize`` (explicit
coordinator/process arguments, or auto-detection on TPU pods and SLURM) and selects gloo
for CPU collectives, so the same program runs as P processes on loopback.

The rows of a dataset are split into P contiguous ranges (:func:`row_range`; the last ones
one row shorter when P does not divide n). `diva_jax.features.extract.sharded_features`
embeds each process's range on its local devices (each batch row-sharded over them with ``NamedSharding``) and
gathers the rows so that every process holds the whole ``[n, d]`` matrix; the derivative
then runs on a row-sharded global array (``diva_jax.parallel.sharding``), where only ``[d, d]`` and
``[n]``-sized results cross hosts.

Host collectives (:func:`broadcast_bytes`, :func:`allgather_bytes`, :func:`barrier`) are
``jax.experimental.multihost_utils``; with one process they return at once, so every
function here is also the single-process code path. :func:`local` runs a block as if this
process were alone (its local devices, process index 0): the sweep uses it to run each
process's share of points independently.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
from typing import Iterator, Sequence

import jax
import numpy as np

from diva_jax.loo.results import LooResult
from diva_jax.loo import api as _loo
from diva_jax.loo import checks as _checks
from diva_jax.parallel import sharding
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

__all__ = [
    "initialize",
    "process_count",
    "process_index",
    "devices",
    "local",
    "row_range",
    "barrier",
    "broadcast_bytes",
    "allgather_bytes",
    "allgather_ints",
]

_LOCAL = contextvars.ContextVar("diva_jax_local_process", default=False)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> None:
  """``jax.distributed.initialize`` with gloo CPU collectives; call before any JAX work.

  Without arguments JAX auto-detects the cluster (TPU pod slices, SLURM, Open MPI). With
  them (all three, as on CPU loopback): ``coordinator_address="127.0.0.1:PORT"``,
  ``num_processes=P``, ``process_id=i`` in process i.

  Raises:
    ValueError: some but not all of the three arguments, or out-of-range values.
  """
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError(
        "coordinator_address, num_processes and process_id: expected all three or none "
        f"(auto-detection), got coordinator_address={coordinator_address!r}, "
        f"num_processes={num_processes!r}, process_id={process_id!r}.")
  if all(given):
    if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
      raise ValueError(f"process_id: expected 0 <= process_id < num_processes, got "
                       f"process_id={process_id}, num_processes={num_processes}.")
  # Harmless on GPU/TPU (it only selects the CPU backend's collectives); needed on CPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_s)


def process_count() -> int:
  """``jax.process_count()``, or 1 inside :func:`local`."""
  return 1 if _LOCAL.get() else jax.process_count()


def process_index() -> int:
  """``jax.process_index()``, or 0 inside :func:`local`."""
  return 0 if _LOCAL.get() else jax.process_index()


def devices() -> list:
  """Every device of every process (``jax.devices()``), or the local ones in :func:`local`."""
  return list(jax.local_devices() if _LOCAL.get() else jax.devices())


@contextlib.contextmanager
def local() -> Iterator[None]:
  """Runs the block as a single-process program on this process's local devices."""
  token = _LOCAL.set(True)
  try:
    yield
  finally:
    _LOCAL.reset(token)


def row_range(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
  """``[start, stop)`` of process ``index``'s rows out of ``n`` (contiguous, sizes differ by
  at most one, the larger ones first)."""
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  base, extra = divmod(int(n), int(count))
  start = index * base + min(index, extra)
  return start, start + base + (1 if index < extra else 0)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op with one process)."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _broadcast_array(x: np.ndarray) -> np.ndarray:
  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def broadcast_bytes(data: bytes | None) -> bytes:
  """Process 0's ``data`` on every process (other processes may pass None)."""
  if process_count() == 1:
    return b"" if data is None else bytes(data)
  mine = np.frombuffer(data or b"", np.uint8) if process_index() == 0 else np.zeros(0, np.uint8)
  size = int(_broadcast_array(np.asarray([mine.size], np.int64))[0])
  buf = mine if process_index() == 0 else np.zeros(size, np.uint8)
  if size == 0:
    return b""
  return _broadcast_array(buf).astype(np.uint8).tobytes()


def allgather_ints(values: Sequence[int]) -> np.ndarray:
  """``[P, k]`` int64: every process's ``k`` integers (same ``k`` everywhere)."""
  mine = np.asarray(values, np.int64).reshape(1, -1)
  if process_count() == 1:
    return mine
  return np.asarray(multihost_utils.process_allgather(mine[0])).reshape(process_count(), -1)


def _allgather_padded(x: np.ndarray, rows: int) -> np.ndarray:
  """[P, rows, ...]: every process's ``x`` (at most ``rows`` rows), zero-padded to ``rows``."""
  pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
  return np.asarray(multihost_utils.process_allgather(np.concatenate([x, pad])))


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's ``data``, in process order (lengths may differ)."""
  if process_count() == 1:
    return [bytes(data)]
  sizes = allgather_ints([len(data)])[:, 0]
  gathered = _allgather_padded(np.frombuffer(data, np.uint8), int(sizes.max()) or 1)
  return [gathered[p, :int(s)].tobytes() for p, s in enumerate(sizes)]


def allsum(x) -> np.ndarray:
  """The sum over every process of ``x`` (same shape everywhere), in process order, so every
  process gets the same bits. float64 stays float64 (the gather runs under x64)."""
  x = np.asarray(x)
  if process_count() == 1:
    return x
  with jax.enable_x64(True):
    return np.asarray(multihost_utils.process_allgather(x)).sum(0).astype(x.dtype)


def allmin(x: float) -> float:
  """The minimum over every process of the scalar ``x``."""
  if process_count() == 1:
    return float(x)
  with jax.enable_x64(True):
    return float(np.min(np.asarray(multihost_utils.process_allgather(np.float64(x)))))


def gather_rows(local_rows: np.ndarray, n: int) -> np.ndarray:
  """The ``[n, ...]`` array whose :func:`row_range` of each process is its ``local_rows``."""
  if process_count() == 1:
    return np.asarray(local_rows)
  per = row_range(n, 0)[1]  # the largest share
  gathered = _allgather_padded(np.asarray(local_rows), per)
  parts = [gathered[p, :row_range(n, p)[1] - row_range(n, p)[0]]
           for p in range(process_count())]
  return np.concatenate(parts)


def save_npz_bytes(arrays: dict) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def load_npz_bytes(data: bytes) -> dict:
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------------------
# The derivative on a row-sharded array.


def sharded_loo_loss_and_derivative(weights: np.ndarray, targets: np.ndarray, *,
                                    features: np.ndarray, reg: float, loss: str = "mse",
                                    temperature: float = 1.0, outer: str = "mean"):
  """``diva_jax.loo_loss_and_derivative`` over the devices of every process.

  The rows (identical on every process) are padded with zero-weight rows to a multiple of
  the device count and placed row-sharded on a data mesh of :func:`devices` (each device
  holds only its rows, ``jax.make_array_from_callback``); XLA's partitioner turns the
  primal form's Gram products into per-device partial sums and one all-reduce, so only
  ``[d, d]``-, ``[d, c]``- and ``[n]``-sized values cross devices and hosts. Padding rows
  are left out of the loss (``eval_mask``) and of the result. With one device this is the
  in-memory host path. ``outer``: "mean" or "weighted", as in ``diva_jax.loo_loss``.

  Returns:
    ``LooResult(value, derivative [n])`` of jax arrays (process-local copies), the same on
    every process.
  """
  # The public boundary: checked on the host rows, before anything is placed.
  _loo._validate(weights, targets, features, None, reg, None, loss, temperature, outer)  # pylint: disable=protected-access
  devs = devices()
  if len(devs) == 1:
    value, deriv = _loo.loo_loss_and_derivative(
        weights, targets, features=features, reg=reg, loss=loss, temperature=temperature,
        outer=outer)
    return LooResult(value, deriv)
  n = int(np.shape(features)[0])
  pad = (-n) % len(devs)
  mesh = sharding.data_mesh(devs)

  def place(x):
    x = np.asarray(x)  # padding: copies of row 0 (valid targets for 'ce'), then zeroed
    fill = np.repeat(x[:1], pad, 0) if x is targets_ else np.zeros((pad,) + x.shape[1:], x.dtype)
    x = np.concatenate([x, fill])
    spec = NamedSharding(mesh, PartitionSpec("data", *([None] * (x.ndim - 1))))
    return jax.make_array_from_callback(x.shape, spec, lambda idx: x[idx])

  mask = np.ones(n, bool)  # padded with False
  targets_ = targets = np.asarray(targets)
  value, deriv = _loo.loo_loss_and_derivative(
      place(weights), place(targets), features=place(features), reg=reg, loss=loss,
      temperature=temperature, eval_mask=place(mask), backend="xla", outer=outer)
  if process_count() > 1:
    deriv = multihost_utils.process_allgather(deriv, tiled=True)
  value, deriv = np.asarray(value), np.asarray(deriv)[:n]
  _checks.raise_if_nonfinite((value, deriv), reg, "LOO loss or derivative")
  return LooResult(jax.numpy.asarray(value), jax.numpy.asarray(deriv))
