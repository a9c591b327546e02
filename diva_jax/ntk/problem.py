"""The empirical-NTK problem: input validation, output layout, per-sample function.

One concern: turn ``(apply_fn, params, x1, x2, trace_axes, vmap_axes,
trainable)`` into a ``Problem``: batch-first inputs, the trainable/frozen
split of ``params``, and per-sample outputs folded to ``[T, R]`` (T traced
output entries, R kept ones), the form every implementation in
``diva_jax.ntk.contraction`` / ``diva_jax.ntk.structured`` and the feature
maps in ``diva_jax.ntk.feature_maps`` consume. Checks here run at the public
boundary, outside of any block. Conventions: see ``diva_jax.ntk.api``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax import _tree_utils
from diva_jax.loo.checks import is_concrete

# Every ``progress`` argument of the NTK / feature builders: ``progress(done,
# total)``, called after each block.
Progress = Callable[[int, int], Any]


def check_finite_output(result, what: str) -> None:
  """Raises ValueError if a concrete ``result`` holds NaN or Inf.

  Unlike ``diva_jax.loo.checks.check_finite`` this reduces on the device (no
  host copy of an ``[n, n]`` kernel) and names the network as the cause.
  """
  if is_concrete(result) and not bool(jnp.all(jnp.isfinite(result))):
    raise ValueError(
        f"{what}: expected finite values, got non-finite entries: the network's "
        "outputs or Jacobians at these parameters and inputs are not finite.")


def check_block_size(block_size):
  if block_size is not None and (not isinstance(block_size, (int, np.integer))
                                 or block_size < 1):
    raise ValueError(
        f"block_size: expected None or an integer >= 1, got {block_size!r}.")


def check_vmap_axes(vmap_axes):
  if vmap_axes is not None and not isinstance(vmap_axes, (int, np.integer)):
    raise ValueError(
        f"vmap_axes: expected an int (the batch axis) or None, got "
        f"{vmap_axes!r}.")


def batch_axis(vmap_axes) -> int:
  return 0 if vmap_axes is None else int(vmap_axes)


def _to_batch_first(x, vmap_axes, name: str):
  x = jnp.asarray(x)
  b = batch_axis(vmap_axes)
  if x.ndim < 1 or not -x.ndim <= b < x.ndim:
    raise ValueError(
        f"{name}: expected an array with a batch axis {b}, got shape "
        f"{x.shape}.")
  return jnp.moveaxis(x, b, 0)


class Layout(NamedTuple):
  """How a per-sample output ``[*out_shape]`` is folded into ``[T, R]``."""
  traced: tuple[int, ...]  # per-sample axes that are traced
  rest: tuple[int, ...]    # per-sample axes that are kept
  rshape: tuple[int, ...]
  t: int
  r: int

  def fold(self, out):  # [*out_shape] -> [T, R]
    out = jnp.transpose(out, self.traced + self.rest)
    return out.reshape(self.t, self.r)

  def unfold_kernel(self, k):  # [n1, n2, R, R] -> NT layout
    n1, n2 = k.shape[:2]
    k = k.reshape((n1, n2) + self.rshape + self.rshape)
    m = len(self.rshape)
    order = [0, 1] + [a for i in range(m) for a in (2 + i, 2 + m + i)]
    return jnp.transpose(k, order)


def make_layout(out_ndim_with_batch: int, out_shape: tuple[int, ...],
                 trace_axes, vmap_axes) -> Layout:
  b = batch_axis(vmap_axes) % out_ndim_with_batch
  try:
    axes = tuple(sorted({int(a) % out_ndim_with_batch for a in trace_axes}))
  except TypeError as e:
    raise ValueError(
        f"trace_axes: expected a sequence of ints, got {trace_axes!r}.") from e
  if any(not -out_ndim_with_batch <= int(a) < out_ndim_with_batch
         for a in trace_axes):
    raise ValueError(
        f"trace_axes: expected axes of an output with {out_ndim_with_batch} "
        f"dims (batch included), got {tuple(trace_axes)}.")
  if b in axes:
    raise ValueError(
        f"trace_axes: expected output axes other than the batch axis {b}, got "
        f"{tuple(trace_axes)}.")
  per_sample = [a if a < b else a - 1 for a in axes]
  rest = tuple(a for a in range(len(out_shape)) if a not in per_sample)
  rshape = tuple(out_shape[a] for a in rest)
  t = int(np.prod([out_shape[a] for a in per_sample], dtype=np.int64))
  return Layout(tuple(per_sample), rest, rshape, t,
                int(np.prod(rshape, dtype=np.int64)))


class Problem(NamedTuple):
  """Everything a kernel / feature implementation needs at call time."""
  part: _tree_utils.Partition
  train: list          # trainable leaves (the variables of the Jacobian)
  frozen: list         # frozen leaves
  layout: Layout
  f_sample: Callable   # (train, x_i) -> [T, R]   (vmap_axes is an int)
  f_batch: Callable    # (train, X) -> [b, T, R]
  per_sample: bool     # True when vmap_axes is an int
  consts: Any          # (frozen leaves, array-valued apply kwargs)
  f_sample_consts: Callable  # (train, consts, x_i) -> [T, R], closes over no arrays

  def outputs(self, tr, xb):
    """``[b, T, R]``: per sample (vmapped) when ``per_sample``, else as a batch."""
    if self.per_sample:
      return jax.vmap(self.f_sample, in_axes=(None, 0))(tr, xb)
    return self.f_batch(tr, xb)


def setup(apply_fn, params, x1, x2, *, trace_axes, vmap_axes, trainable,
          kwargs) -> tuple[Problem, jax.Array, jax.Array | None]:
  """Validates inputs and builds the per-sample function (batch first)."""
  part = _tree_utils.make_partition(params, trainable)
  train, frozen = part.split(params)
  x1 = _to_batch_first(x1, vmap_axes, "x1")
  if x2 is not None:
    x2 = _to_batch_first(x2, vmap_axes, "x2")
    if x1.shape[1:] != x2.shape[1:]:
      raise ValueError(
          "x1, x2: expected the same per-sample shape, got "
          f"{x1.shape[1:]} for x1 and {x2.shape[1:]} for x2.")
  b = batch_axis(vmap_axes)

  # Array-valued kwargs are explicit arguments of f_sample_consts (so a jaxpr of it closes
  # over no outer tracers); the others are static.
  kw_leaves, kw_def = jax.tree_util.tree_flatten(kwargs)
  kw_dynamic = [isinstance(l, (jax.Array, np.ndarray, np.generic)) for l in kw_leaves]

  def kwargs_from(dyn):
    dyn = iter(dyn)
    return kw_def.unflatten([next(dyn) if d else l for l, d in zip(kw_leaves, kw_dynamic)])

  def call(p, xb, kw=kwargs):  # xb batch-first -> output batch-first
    out = apply_fn(p, jnp.moveaxis(xb, 0, b), **kw)
    if not isinstance(out, jax.Array) and not hasattr(out, "shape"):
      raise ValueError(
          "apply_fn: expected a single array output, got "
          f"{type(out).__name__}.")
    return jnp.moveaxis(out, b, 0)

  probe = x1[:1]
  try:
    out = jax.eval_shape(call, params, probe)
  except Exception as e:  # flax raises its own error types for shape misfits
    raise ValueError(
        f"apply_fn(params, x): expected parameters and inputs that fit the "
        f"network, got inputs of per-sample shape {tuple(x1.shape[1:])} "
        f"(batch axis {b}) and parameters {jax.tree_util.tree_map(jnp.shape, params)}; "
        f"the network raised {type(e).__name__}: {e}") from e
  if out.ndim < 1 or out.shape[0] != 1:
    raise ValueError(
        f"apply_fn: expected outputs with a batch axis {b} of the input batch "
        f"size, got shape {out.shape} (batch-first) for a batch of 1.")
  if not jnp.issubdtype(out.dtype, jnp.inexact):
    raise ValueError(
        f"apply_fn: expected floating-point outputs, got dtype {out.dtype}.")
  layout = make_layout(out.ndim, tuple(out.shape[1:]), trace_axes, vmap_axes)

  def f_batch(tr, xb):
    out = call(part.merge(tr, frozen), xb)
    return jax.vmap(layout.fold)(out)

  def f_sample(tr, x):
    return f_batch(tr, x[None])[0]

  def f_sample_consts(tr, consts, x):
    fr, dyn = consts
    out = call(part.merge(tr, fr), x[None], kwargs_from(dyn))
    return layout.fold(out[0])

  consts = (frozen, [l for l, d in zip(kw_leaves, kw_dynamic) if d])
  problem = Problem(part, train, frozen, layout, f_sample, f_batch,
                    vmap_axes is not None, consts, f_sample_consts)
  return problem, x1, x2
