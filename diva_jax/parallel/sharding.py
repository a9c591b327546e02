"""Data-parallel kernels, features and Gram products over a 1-D device mesh.

Rows (samples) are sharded over a mesh axis ("data"); every device computes
the rows it holds, and reductions over samples (the primal-form Gram products
``Z^T A Z``, ``Z^T A Y``) are local partial sums followed by one all-reduce.
Multi-device is ``NamedSharding`` over a mesh; ``jax.shard_map`` is used only
where per-device work is deliberate (one kernel row block per device, one
partial Gram per device). Never ``pmap``.

Multi-host: call ``jax.distributed.initialize()`` first (one process per host;
on CPU also ``jax.config.update('jax_cpu_collectives_implementation',
'gloo')``); ``data_mesh()`` then spans every process's devices and
``shard_rows`` assembles a global array from each process's local rows. The
same code runs on one CPU, 8 fake CPU devices, or a TPU pod slice.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_HIGHEST = jax.lax.Precision.HIGHEST


def data_mesh(devices: Sequence[Any] | None = None, axis: str = "data") -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process).

  Args:
    devices: devices to use, default ``jax.devices()`` (global).
    axis: the mesh axis name.

  Returns:
    A ``jax.sharding.Mesh`` with one ``Auto`` axis named ``axis``.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices: expected at least one device, got none.")
  return jax.make_mesh((len(devices),), (axis,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def _axis(mesh: Mesh, axis: str | None) -> str:
  if axis is None:
    if len(mesh.axis_names) != 1:
      raise ValueError(
          f"axis: expected an axis name for a mesh with axes "
          f"{mesh.axis_names}, got None.")
    return mesh.axis_names[0]
  if axis not in mesh.axis_names:
    raise ValueError(
        f"axis: expected one of the mesh axes {mesh.axis_names}, got {axis!r}.")
  return axis


def row_sharding(mesh: Mesh, ndim: int = 2,
                 axis: str | None = None) -> NamedSharding:
  """``NamedSharding`` splitting axis 0 of an ``ndim`` array over ``axis``."""
  return NamedSharding(mesh, P(_axis(mesh, axis), *([None] * (ndim - 1))))


def shard_rows(x, mesh: Mesh, axis: str | None = None) -> jax.Array:
  """Places the rows of ``x`` on the devices of ``mesh`` (split over ``axis``).

  Single process: ``x`` holds all rows, ``[n, ...]``. Multi-process
  (``jax.process_count() > 1``): ``x`` holds this process's rows and the
  global array (rows of process 0 first, then 1, ...) is assembled with
  ``jax.make_array_from_process_local_data``.

  Args:
    x: ``[n, ...]`` rows (process-local rows when multi-process).
    mesh: the device mesh (``data_mesh()``).
    axis: mesh axis to split rows over (default: the mesh's only axis).

  Returns:
    A ``jax.Array`` sharded by rows, ``[n_global, ...]``.

  Raises:
    ValueError: if the row count is not divisible by the number of devices
      on ``axis`` (pad with zero-weight rows first).
  """
  name = _axis(mesh, axis)
  size = mesh.shape[name]
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    n = x.shape[0]
  else:
    x = jnp.asarray(x) if not hasattr(x, "shape") else x
    n = x.shape[0] * jax.process_count()
  if jnp.ndim(x) < 1 or n % size:
    raise ValueError(
        f"shard_rows: expected a row count divisible by the {size} devices on "
        f"mesh axis '{name}', got shape {jnp.shape(x)} (global rows {n}); pad "
        "with zero-weight rows.")
  sharding = row_sharding(mesh, jnp.ndim(x), name)
  if jax.process_count() > 1:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.device_put(x, sharding)


def _gram_local(z, a, y):
  za = z * a[:, None].astype(z.dtype)
  return (jnp.matmul(za.T, z, precision=_HIGHEST),
          jnp.matmul(za.T, y, precision=_HIGHEST))


def sharded_gram(weights: jax.Array, targets: jax.Array, *,
                 features: jax.Array, mesh: Mesh | None = None,
                 axis: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Weighted Gram products of the primal form, reduced across devices.

  Computes ``G = Z^T A Z`` and ``B = Z^T A Y`` with ``A = diag(weights)``:
  each device multiplies the rows it holds (a partial ``[d, d]`` and
  ``[d, c]``), then one ``psum`` over ``axis`` adds the partials. Memory per
  device: its rows plus ``O(d^2 + d c)``; the ``[n, d]`` features are never
  gathered. Rows that do not divide evenly are padded with zero-weight rows
  (they contribute nothing).

  The argument order of the rest of the API: ``(weights, targets, *,
  features=...)``. Under ``jax.jit`` pass the mesh as a static argument
  (``static_argnames=("mesh", "axis")``) or close over it.

  Args:
    weights: ``a``, ``[n]`` sample weights.
    targets: ``Y``, ``[n, c]`` (or ``[n]``, giving ``B`` of shape ``[d]``).
    features: ``Z``, ``[n, d]`` (ideally already row-sharded, ``shard_rows``).
    mesh: device mesh; ``None`` computes on the default device.
    axis: mesh axis the rows are split over (default: the only axis).

  Returns:
    ``(G [d, d], B [d, c])``, replicated on every device of ``mesh``.

  Raises:
    ValueError: on mismatched row counts or wrong ranks.
  """
  z, a, y = features, weights, targets
  if jnp.ndim(z) != 2:
    raise ValueError(
        f"features: expected a 2-D [n, d] array, got shape {jnp.shape(z)}.")
  n = jnp.shape(z)[0]
  if jnp.shape(a) != (n,):
    raise ValueError(
        f"weights: expected shape ({n},) to match features {jnp.shape(z)}, "
        f"got {jnp.shape(a)}.")
  if jnp.ndim(y) not in (1, 2) or jnp.shape(y)[0] != n:
    raise ValueError(
        f"targets: expected shape ({n}, c) or ({n},) to match features "
        f"{jnp.shape(z)}, got {jnp.shape(y)}.")
  vector_targets = jnp.ndim(y) == 1
  if vector_targets:
    y = y[:, None]
  if mesh is None:
    g, b = _gram_local(jnp.asarray(z), jnp.asarray(a), jnp.asarray(y))
  else:
    name = _axis(mesh, axis)
    pad = (-n) % mesh.shape[name]
    if pad:
      z = jnp.pad(z, ((0, pad), (0, 0)))
      a = jnp.pad(a, ((0, pad),))
      y = jnp.pad(y, ((0, pad), (0, 0)))

    def partial_gram(z_loc, a_loc, y_loc):
      g_loc, b_loc = _gram_local(z_loc, a_loc, y_loc)
      return jax.lax.psum(g_loc, name), jax.lax.psum(b_loc, name)

    g, b = jax.shard_map(
        partial_gram, mesh=mesh,
        in_specs=(P(name, None), P(name), P(name, None)),
        out_specs=(P(), P()))(z, a, y)
  return g, (b[:, 0] if vector_targets else b)


def shard_kernel_fn(kernel_fn: Callable[..., jax.Array], mesh: Mesh, *,
                    axis: str | None = None) -> Callable[..., jax.Array]:
  """Distributes ``kernel_fn(x1, x2, params)`` by rows of x1 over ``mesh``.

  Each device computes the kernel rows of the x1 samples it holds against all
  of x2 (``x2`` and ``params`` are replicated; ``x2=None`` means x1,
  gathered once). The result ``[n1, n2, ...]`` stays row-sharded: it is never
  replicated.

  Args:
    kernel_fn: from ``empirical_ntk_fn`` (any blocking inside applies per
      device).
    mesh: device mesh.
    axis: mesh axis the rows are split over.

  Returns:
    ``sharded_kernel_fn(x1, x2, params, **apply_kwargs)``; ``n1`` must be
    divisible by the number of devices on ``axis``.
  """
  name = _axis(mesh, axis)

  def sharded(x1, x2, params, **apply_kwargs):
    _check_divisible(x1, mesh, name, "x1")
    x2 = x1 if x2 is None else x2

    def local(x1_loc, x2_all, p):
      return kernel_fn(x1_loc, x2_all, p, **apply_kwargs)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(name), P(), P()),
                         out_specs=P(name), check_vma=False)(x1, x2, params)

  return sharded


def shard_features_fn(features_fn: Callable[..., jax.Array], mesh: Mesh, *,
                      axis: str | None = None) -> Callable[..., jax.Array]:
  """Distributes ``features_fn(x, params)`` by rows of x over ``mesh``.

  Each device computes the feature rows of its samples; the output stays
  row-sharded, ready for ``sharded_gram``.

  Args:
    features_fn: from ``jacobian_features`` / ``projected_jacobian_features``
      (projected features do not depend on which device computes a row).
    mesh: device mesh.
    axis: mesh axis the rows are split over.

  Returns:
    ``sharded_features_fn(x, params, **apply_kwargs)``; ``n`` must be
    divisible by the number of devices on ``axis``.
  """
  name = _axis(mesh, axis)

  def sharded(x, params, **apply_kwargs):
    _check_divisible(x, mesh, name, "x")

    def local(x_loc, p):
      return features_fn(x_loc, p, **apply_kwargs)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(name), P()),
                         out_specs=P(name), check_vma=False)(x, params)

  return sharded


def _check_divisible(x, mesh, name, what):
  size = mesh.shape[name]
  if jnp.ndim(x) < 1 or jnp.shape(x)[0] % size:
    raise ValueError(
        f"{what}: expected a row count divisible by the {size} devices on mesh "
        f"axis '{name}', got shape {jnp.shape(x)}.")
