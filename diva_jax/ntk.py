"""Empirical neural tangent kernel and Jacobian features, built in blocks.

Shapes and conventions (the neural-tangents ones):

* ``apply_fn(params, x)`` maps a batch ``x`` of shape ``[n, *in_shape]`` (batch
  axis ``vmap_axes``, default 0) to outputs ``[n, *out_shape]``.
* ``J(x_i)`` is the Jacobian of sample i's output over the chosen ("trainable")
  parameters, ``[*out_shape, P]``.
* ``trace_axes`` (default ``(-1,)``, the logits) are output axes that are
  averaged over: the traced NTK is

      K[i, j] = (1 / T) sum_t J_t(x_i) . J_t(x_j),   T = size of traced axes,

  the MEAN over traced axes, exactly as neural-tangents defines it (1/T of the
  sum). Scaling K by 1/T is the same as scaling a ridge ``reg`` by T, so users
  of the LOO functions get neural-tangents' scale, not the summed one.
* Non-traced output axes appear in pairs after ``[n1, n2]``, interleaved like
  neural-tangents (``zip(f(x1).shape, f(x2).shape)``): outputs ``[n, c]`` with
  ``trace_axes=()`` give the full kernel ``[n1, n2, c, c]``.

Implementations (``implementation=``):

* ``'jacobian_contraction'``: per-sample Jacobians (``vmap(jacrev)``), then
  ``sum over parameter leaves of J1_leaf . J2_leaf``; cost O(n c P) memory per
  block.
* ``'ntk_vector_products'``: ``K v = J1 (J2^T v)`` with one ``jax.vjp`` and one
  ``jax.jvp`` per column of the block (columns vmapped); never holds a
  per-sample Jacobian, does more FLOPs.
* ``'structured'`` (default): exploits flax linen ``nn.Dense`` layers. A Dense
  layer ``y = h W + b`` contributes ``(h1 . h2) (d1 . d2)`` to the kernel, with
  ``h`` its input activations and ``d = df/dy`` the output cotangents, so no
  Jacobian of W is formed. Activations and cotangents are captured with
  ``flax.linen.intercept_methods``: a zero perturbation is added to each Dense
  output and differentiated. Every parameter leaf that is not the kernel or
  bias of a Dense called exactly once (convolutions, norms, embeddings, or any
  non-linen ``apply_fn`` such as an nnx model) falls back to the Jacobian
  contraction for that leaf only, so the result is always exact. Caveat: a
  Dense kernel that is *also* used outside its own call (weight tying, e.g.
  ``Embed.attend`` on a shared table) would be under-counted: use
  ``'jacobian_contraction'`` or exclude it with ``trainable``.

Blocks: with ``block_size=b`` the rows of x1 and x2 are processed in blocks of
``b`` (``lax.map``, i.e. sequentially), so the memory in flight is that of one
``[b, b]`` block (plus per-block Jacobians), and ``n`` is limited by the
output. ``progress(done, total)`` is called after each block, through
``jax.debug.callback``, so it works eagerly and under ``jax.jit``.

The library never jits: wrap the returned ``kernel_fn`` / ``features_fn`` in
``jax.jit`` (``params`` and inputs are traced arguments).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diva_jax import _tree_utils

PyTree = Any
Progress = Callable[[int, int], Any]

IMPLEMENTATIONS = ("structured", "jacobian_contraction", "ntk_vector_products")
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------
# Validation helpers (run at the public boundary, outside of any block).
# ----------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not any(isinstance(l, jax.core.Tracer)
                 for l in jax.tree_util.tree_leaves(x))


def _check_finite(result, what: str) -> None:
  if _is_concrete(result) and not bool(jnp.all(jnp.isfinite(result))):
    raise ValueError(
        f"{what}: expected finite values, got non-finite entries: the network's "
        "outputs or Jacobians at these parameters and inputs are not finite.")


def _check_block_size(block_size):
  if block_size is not None and (not isinstance(block_size, (int, np.integer))
                                 or block_size < 1):
    raise ValueError(
        f"block_size: expected None or an integer >= 1, got {block_size!r}.")


def _check_vmap_axes(vmap_axes):
  if vmap_axes is not None and not isinstance(vmap_axes, (int, np.integer)):
    raise ValueError(
        f"vmap_axes: expected an int (the batch axis) or None, got "
        f"{vmap_axes!r}.")


def _batch_axis(vmap_axes) -> int:
  return 0 if vmap_axes is None else int(vmap_axes)


def _to_batch_first(x, vmap_axes, name: str):
  x = jnp.asarray(x)
  b = _batch_axis(vmap_axes)
  if x.ndim < 1 or not -x.ndim <= b < x.ndim:
    raise ValueError(
        f"{name}: expected an array with a batch axis {b}, got shape "
        f"{x.shape}.")
  return jnp.moveaxis(x, b, 0)


class _Layout(NamedTuple):
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


def _make_layout(out_ndim_with_batch: int, out_shape: tuple[int, ...],
                 trace_axes, vmap_axes) -> _Layout:
  b = _batch_axis(vmap_axes) % out_ndim_with_batch
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
  return _Layout(tuple(per_sample), rest, rshape, t,
                 int(np.prod(rshape, dtype=np.int64)))


# ----------------------------------------------------------------------------
# The per-sample function over the trainable leaves.
# ----------------------------------------------------------------------------


class _Problem(NamedTuple):
  """Everything a kernel / feature implementation needs at call time."""
  part: _tree_utils.Partition
  train: list          # trainable leaves (the variables of the Jacobian)
  frozen: list         # frozen leaves
  layout: _Layout
  f_sample: Callable   # (train, x_i) -> [T, R]   (vmap_axes is an int)
  f_batch: Callable    # (train, X) -> [b, T, R]
  per_sample: bool     # True when vmap_axes is an int


def _setup(apply_fn, params, x1, x2, *, trace_axes, vmap_axes, trainable,
           kwargs) -> tuple[_Problem, jax.Array, jax.Array | None]:
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
  b = _batch_axis(vmap_axes)

  def call(p, xb):  # xb batch-first -> output batch-first
    out = apply_fn(p, jnp.moveaxis(xb, 0, b), **kwargs)
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
  layout = _make_layout(out.ndim, tuple(out.shape[1:]), trace_axes, vmap_axes)

  def f_batch(tr, xb):
    out = call(part.merge(tr, frozen), xb)
    return jax.vmap(layout.fold)(out)

  def f_sample(tr, x):
    return f_batch(tr, x[None])[0]

  problem = _Problem(part, train, frozen, layout, f_sample, f_batch,
                     vmap_axes is not None)
  return problem, x1, x2


# ----------------------------------------------------------------------------
# Blocked drivers.
# ----------------------------------------------------------------------------


def _pad_rows(x, multiple):
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    # Repeat the last row: valid input for any network (zeros might not be).
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
  return x


def _blocked_pairs(prep, contract, x1, x2, block_size, progress):
  """K = contract(prep(x1), prep(x2)) computed block by block.

  Args:
    prep: ``X[b, ...] -> state`` (per-block Jacobians, activations, ...).
    contract: ``(state1, state2) -> [b1, b2, ...]``.
    x1, x2: batch-first inputs, ``[n1, ...]``, ``[n2, ...]``.
    block_size: rows per block, or None for a single block.
    progress: optional ``progress(done, total)`` called after each block.

  Returns:
    ``[n1, n2, ...]``.
  """
  n1, n2 = x1.shape[0], x2.shape[0]
  if block_size is None or (n1 <= block_size and n2 <= block_size):
    out = contract(prep(x1), prep(x2))
    if progress is not None:
      jax.debug.callback(progress, 1, 1)
    return out
  b = block_size
  xs1 = _pad_rows(x1, b).reshape((-1, b) + x1.shape[1:])
  xs2 = _pad_rows(x2, b).reshape((-1, b) + x2.shape[1:])
  nb1, nb2 = xs1.shape[0], xs2.shape[0]

  def row(args):
    i, xb1 = args
    s1 = prep(xb1)

    def col(args):
      j, xb2 = args
      out = contract(s1, prep(xb2))
      if progress is not None:
        jax.debug.callback(progress, i * nb2 + j + 1, nb1 * nb2)
      return out

    return jax.lax.map(col, (jnp.arange(nb2), xs2))

  blocks = jax.lax.map(row, (jnp.arange(nb1), xs1))  # [nb1, nb2, b, b, ...]
  rest = blocks.shape[4:]
  k = jnp.swapaxes(blocks, 1, 2).reshape((nb1 * b, nb2 * b) + rest)
  return k[:n1, :n2]


def _blocked_rows(fn, x, block_size, progress):
  """``fn(X[b, ...]) -> [b, ...]`` applied block by block over rows of x."""
  n = x.shape[0]
  if block_size is None or n <= block_size:
    out = fn(x)
    if progress is not None:
      jax.debug.callback(progress, 1, 1)
    return out
  b = block_size
  xs = _pad_rows(x, b).reshape((-1, b) + x.shape[1:])
  nb = xs.shape[0]

  def body(args):
    i, xb = args
    out = fn(xb)
    if progress is not None:
      jax.debug.callback(progress, i + 1, nb)
    return out

  out = jax.lax.map(body, (jnp.arange(nb), xs))
  return out.reshape((nb * b,) + out.shape[2:])[:n]


# ----------------------------------------------------------------------------
# Implementation 1: Jacobian contraction (leaf by leaf).
# ----------------------------------------------------------------------------


def _leaf_jacobians(problem: _Problem, leaves_fn, variables, xb):
  """Per-sample Jacobians ``[b, T, R, L]`` per leaf of ``variables``."""
  if problem.per_sample:
    jac = jax.vmap(jax.jacrev(leaves_fn), in_axes=(None, 0))(variables, xb)
  else:
    jac = jax.jacrev(leaves_fn)(variables, xb)  # [b, T, R, *leaf]
  b = xb.shape[0]
  t, r = problem.layout.t, problem.layout.r
  return [j.reshape(b, t, r, -1) for j in jac]


def _contract_leaf_jacobians(j1s, j2s, t):
  k = 0.
  for j1, j2 in zip(j1s, j2s):
    k = k + jnp.einsum("itrl,jtsl->ijrs", j1, j2, precision=_HIGHEST)
  return k / t


def _jacobian_contraction(problem: _Problem, x1, x2, block_size, progress):
  fn = problem.f_sample if problem.per_sample else problem.f_batch
  prep = lambda xb: _leaf_jacobians(problem, fn, problem.train, xb)
  contract = lambda a, b: _contract_leaf_jacobians(a, b, problem.layout.t)
  return _blocked_pairs(prep, contract, x1, x2, block_size, progress)


# ----------------------------------------------------------------------------
# Implementation 2: NTK-vector products.
# ----------------------------------------------------------------------------


def _ntk_vector_products(problem: _Problem, x1, x2, block_size, progress):
  t = problem.layout.t

  def batch_out(tr, xb):
    if problem.per_sample:
      return jax.vmap(problem.f_sample, in_axes=(None, 0))(tr, xb)
    return problem.f_batch(tr, xb)

  def contract(xb1, xb2):
    _, jvp1 = jax.linearize(lambda tr: batch_out(tr, xb1), problem.train)
    out2, vjp2 = jax.vjp(lambda tr: batch_out(tr, xb2), problem.train)
    size2 = math.prod(out2.shape)
    basis = jnp.eye(size2, dtype=out2.dtype).reshape((size2,) + out2.shape)
    cols = jax.vmap(lambda ct: jvp1(vjp2(ct)[0]))(basis)  # [b2*T*R, b1, T, R]
    cols = cols.reshape(out2.shape + cols.shape[1:])        # [b2,T,R,b1,T,R]
    return jnp.einsum("jtsitr->ijrs", cols) / t

  return _blocked_pairs(lambda xb: xb, contract, x1, x2, block_size, progress)


# ----------------------------------------------------------------------------
# Implementation 3: structured (flax linen Dense layers).
# ----------------------------------------------------------------------------


class _DenseCall(NamedTuple):
  kernel_leaf: int | None  # index into the trainable leaves, or None
  bias_leaf: int | None


def _is_linen_dense_call(context) -> bool:
  return (context.method_name == "__call__"
          and type(context.module) is nn.Dense)  # pylint: disable=unidiomatic-typecheck


def _discover_dense_calls(problem: _Problem, x_probe) -> list:
  """Finds linen Dense calls whose kernel/bias are trainable leaves.

  Runs one abstract trace of the per-sample function with an interceptor that
  matches each Dense's parameters by identity against the trainable leaves.

  Returns:
    One ``_DenseCall`` or ``None`` (not structured) per Dense call, in call
    order.
  """
  calls = []

  def fn(tr):
    ids = {id(l): i for i, l in enumerate(tr)}

    def interceptor(next_fun, args, kwargs, context):
      if _is_linen_dense_call(context):
        scope = context.module.scope
        kernel = scope.get_variable("params", "kernel")
        bias = (scope.get_variable("params", "bias")
                if context.module.use_bias else None)
        calls.append(_DenseCall(ids.get(id(kernel)),
                                None if bias is None else ids.get(id(bias))))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return problem.f_sample(tr, x_probe)

  jax.eval_shape(fn, problem.train)
  counts = {}
  for c in calls:
    for leaf in c:
      if leaf is not None:
        counts[leaf] = counts.get(leaf, 0) + 1
  out = []
  for c in calls:
    # A leaf used by several Dense calls (shared module) stays generic.
    k = c.kernel_leaf if c.kernel_leaf is not None and counts[
        c.kernel_leaf] == 1 else None
    b = c.bias_leaf if c.bias_leaf is not None and counts[
        c.bias_leaf] == 1 else None
    out.append(None if k is None and b is None else _DenseCall(k, b))
  return out


def _structured(problem: _Problem, x1, x2, block_size, progress):
  if not problem.per_sample:
    return _jacobian_contraction(problem, x1, x2, block_size, progress)
  calls = _discover_dense_calls(problem, x1[0])
  structured_leaves = {l for c in calls if c is not None for l in c
                       if l is not None}
  if not structured_leaves:
    return _jacobian_contraction(problem, x1, x2, block_size, progress)
  generic = [i for i in range(len(problem.train)) if i not in structured_leaves]
  active = [c for c in calls if c is not None]
  t = problem.layout.t

  def g(eps, gen_leaves, x):
    """Per-sample output with perturbed Dense outputs; aux: Dense inputs."""
    tr = list(problem.train)
    for i, leaf in zip(generic, gen_leaves):
      tr[i] = leaf
    counter = iter(range(len(calls)))
    acts = []
    eps_it = iter(eps)

    def interceptor(next_fun, args, kwargs, context):
      if not _is_linen_dense_call(context):
        return next_fun(*args, **kwargs)
      k = next(counter)
      y = next_fun(*args, **kwargs)
      if calls[k] is None:
        return y
      h = args[0] if args else kwargs["inputs"]
      acts.append(jnp.asarray(h, y.dtype))
      return y + next(eps_it).astype(y.dtype)

    with nn.intercept_methods(interceptor):
      out = problem.f_sample(tr, x)
    return out, acts

  def _dense_output_shapes(x):
    # One abstract trace: shapes of the perturbed Dense outputs.
    shapes = []

    def fn(tr):
      counter = iter(range(len(calls)))

      def interceptor(next_fun, args, kwargs, context):
        if not _is_linen_dense_call(context):
          return next_fun(*args, **kwargs)
        k = next(counter)
        y = next_fun(*args, **kwargs)
        if calls[k] is not None:
          shapes.append(jax.ShapeDtypeStruct(y.shape, y.dtype))
        return y

      with nn.intercept_methods(interceptor):
        return problem.f_sample(tr, x)

    jax.eval_shape(fn, problem.train)
    return shapes

  out_structs = _dense_output_shapes(x1[0])

  def prep(xb):
    def one(x):
      eps = [jnp.zeros(s.shape, s.dtype) for s in out_structs]
      gen = [problem.train[i] for i in generic]
      (d_eps, d_gen), acts = jax.jacrev(g, argnums=(0, 1), has_aux=True)(
          eps, gen, x)
      return d_eps, d_gen, acts
    d_eps, d_gen, acts = jax.vmap(one)(xb)
    b = xb.shape[0]
    # d_eps[l]: [b, T, R, *y_shape] -> [b, T, R, U, out]
    d_eps = [d.reshape(b, t, problem.layout.r, -1, d.shape[-1]) for d in d_eps]
    acts = [a.reshape(b, -1, a.shape[-1]) for a in acts]       # [b, U, in]
    d_gen = [j.reshape(b, t, problem.layout.r, -1) for j in d_gen]
    return d_eps, acts, d_gen

  def contract(s1, s2):
    d1s, a1s, g1s = s1
    d2s, a2s, g2s = s2
    k = _contract_leaf_jacobians(g1s, g2s, t) if g1s else 0.
    for c, d1, a1, d2, a2 in zip(active, d1s, a1s, d2s, a2s):
      if c.kernel_leaf is not None:
        if a1.shape[1] == 1 and a2.shape[1] == 1:
          hh = jnp.einsum("ia,ja->ij", a1[:, 0], a2[:, 0], precision=_HIGHEST)
          dd = jnp.einsum("itro,jtso->ijrs", d1[:, :, :, 0], d2[:, :, :, 0],
                          precision=_HIGHEST)
          k = k + hh[:, :, None, None] * dd / t
        else:
          hh = jnp.einsum("iua,jva->ijuv", a1, a2, precision=_HIGHEST)
          k = k + jnp.einsum("ijuv,itruo,jtsvo->ijrs", hh, d1, d2,
                             precision=_HIGHEST) / t
      if c.bias_leaf is not None:
        k = k + jnp.einsum("itro,jtso->ijrs", d1.sum(3), d2.sum(3),
                           precision=_HIGHEST) / t
    return k

  return _blocked_pairs(prep, contract, x1, x2, block_size, progress)


_IMPLS = {
    "structured": _structured,
    "jacobian_contraction": _jacobian_contraction,
    "ntk_vector_products": _ntk_vector_products,
}


def _check_implementation(implementation):
  if implementation not in _IMPLS:
    raise ValueError(
        f"implementation: expected one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}.")


# ----------------------------------------------------------------------------
# Public builders.
# ----------------------------------------------------------------------------


def empirical_ntk_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    trace_axes: Sequence[int] = (-1,),
    vmap_axes: int | None = 0,
    implementation: str = "structured",
    trainable: Callable[[str], bool] | None = None,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> Callable[..., jax.Array]:
  """Returns ``kernel_fn(x1, x2, params, **kwargs)``, the empirical NTK.

  The API shape of ``neural_tangents.empirical_ntk_fn``. The traced kernel is
  the MEAN over ``trace_axes`` (neural-tangents' convention): with ``c``
  logits it is ``1/c`` of ``sum_k J_k(x1) . J_k(x2)``. Scaling the kernel by
  ``1/c`` is the same as scaling a ridge ``reg`` by ``c``: pass the matching
  ``reg`` to the LOO functions.

  Args:
    apply_fn: ``apply_fn(params, x, **kwargs) -> [n, *out_shape]`` (batch axis
      ``vmap_axes``): flax linen ``model.apply``, an nnx model as
      ``lambda state, x: nnx.merge(graphdef, state)(x)``, or any function.
    trace_axes: output axes (batch axis included in the numbering) averaged
      over; ``()`` gives the full kernel.
    vmap_axes: batch axis of inputs and outputs; samples are then treated as
      independent and the Jacobians are taken per sample (``vmap``). ``None``
      differentiates the whole block at once (use when samples interact, e.g.
      batch statistics; blocks are then separate batches); the structured
      implementation then falls back to the Jacobian contraction.
    implementation: one of ``'structured'`` (default), ``'jacobian_contraction'``,
      ``'ntk_vector_products'``; see the module docstring. All are exact.
    trainable: predicate over the '/'-joined parameter path selecting the
      parameters to differentiate (``diva_jax.path_matches('head')``);
      ``None`` takes every floating-point leaf.
    block_size: rows of x1 and x2 per block (memory bound), or None for one
      block.
    progress: optional ``progress(done, total)`` called after each block.

  Returns:
    ``kernel_fn(x1, x2, params, **apply_kwargs)`` with ``x1 [n1, ...]``,
    ``x2 [n2, ...]`` or ``None`` (meaning ``x1``), returning ``[n1, n2]`` when
    every non-batch output axis is traced, otherwise ``[n1, n2, d1, d1, d2,
    d2, ...]`` (pairs of the kept output axes, e.g. ``[n1, n2, c, c]``).

  Raises:
    ValueError: bad ``implementation``/``block_size``/``vmap_axes`` (at build
      time); at call time: parameters and inputs that do not fit ``apply_fn``,
      x1 and x2 with different per-sample shapes, a ``trainable`` selecting
      nothing, or non-finite kernel entries (checked when not traced).
  """
  _check_implementation(implementation)
  _check_block_size(block_size)
  _check_vmap_axes(vmap_axes)
  impl = _IMPLS[implementation]

  def kernel_fn(x1, x2, params, **apply_kwargs):
    problem, x1b, x2b = _setup(apply_fn, params, x1, x2,
                               trace_axes=trace_axes, vmap_axes=vmap_axes,
                               trainable=trainable, kwargs=apply_kwargs)
    k = impl(problem, x1b, x1b if x2b is None else x2b, block_size, progress)
    k = problem.layout.unfold_kernel(k)
    _check_finite(k, "empirical NTK")
    return k

  return kernel_fn


def jacobian_features(
    apply_fn: Callable[..., jax.Array],
    *,
    trace_axes: Sequence[int] = (-1,),
    vmap_axes: int | None = 0,
    trainable: Callable[[str], bool] | None = None,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> Callable[..., jax.Array]:
  """Returns ``features_fn(x, params, **kwargs)``: exact Jacobian features.

  The features ``Z`` are the per-sample Jacobian rows over the trainable
  parameters, the traced output axes concatenated along the feature axis and
  scaled by ``1/sqrt(T)``, so that ``Z Z^T`` equals the traced NTK of
  ``empirical_ntk_fn`` with the same arguments (the MEAN convention). For
  outputs ``[n, c]`` and ``trace_axes=(-1,)``: ``Z`` is ``[n, c * P]``; with
  ``trace_axes=()``: ``[n, c, P]`` and ``einsum('ikp,jlp->ijkl', Z, Z)`` is the
  full kernel. ``P`` is the number of trainable parameters: use this for small
  networks, ``projected_jacobian_features`` otherwise.

  Args:
    apply_fn: as in ``empirical_ntk_fn``.
    trace_axes: as in ``empirical_ntk_fn``.
    vmap_axes: as in ``empirical_ntk_fn``.
    trainable: as in ``empirical_ntk_fn``.
    block_size: rows per block, or None.
    progress: optional ``progress(done, total)``.

  Returns:
    ``features_fn(x, params, **apply_kwargs) -> [n, *kept_out_shape, T * P]``.
    The column order is traced-output-major, then the parameter leaves in
    ``jax.tree_util`` order, each flattened row-major.
  """
  _check_block_size(block_size)
  _check_vmap_axes(vmap_axes)

  def features_fn(x, params, **apply_kwargs):
    problem, xb, _ = _setup(apply_fn, params, x, None, trace_axes=trace_axes,
                            vmap_axes=vmap_axes, trainable=trainable,
                            kwargs=apply_kwargs)
    fn = problem.f_sample if problem.per_sample else problem.f_batch
    t, layout = problem.layout.t, problem.layout

    def block(xs):
      jac = jnp.concatenate(_leaf_jacobians(problem, fn, problem.train, xs),
                            axis=-1)                     # [b, T, R, P]
      z = jnp.swapaxes(jac, 1, 2).reshape(xs.shape[0], layout.r, -1)
      return z / jnp.sqrt(jnp.asarray(t, z.dtype))

    z = _blocked_rows(block, xb, block_size, progress)
    z = z.reshape((z.shape[0],) + layout.rshape + (z.shape[-1],))
    _check_finite(z, "Jacobian features")
    return z

  return features_fn


def projected_jacobian_features(
    apply_fn: Callable[..., jax.Array],
    width: int,
    *,
    seed: int | jax.Array = 0,
    trace_axes: Sequence[int] = (-1,),
    vmap_axes: int | None = 0,
    trainable: Callable[[str], bool] | None = None,
    block_size: int | None = None,
    chunk_size: int = 32,
    progress: Progress | None = None,
) -> Callable[..., jax.Array]:
  """Returns ``features_fn(x, params)``: Jacobian features projected to ``width``.

  Column ``j`` of the features of sample ``i`` is

      Z[i, j] = s_j . (J(x_i) r_j) / sqrt(T * width),

  with ``r_j ~ N(0, I_P)`` a Gaussian direction in parameter space and ``s_j``
  a Rademacher (+-1) vector over the T traced outputs; ``J(x_i) r_j`` is one
  ``jax.jvp``, so the ``[n, P]`` Jacobian (and the ``[P, width]`` projection)
  are never formed: directions are drawn ``chunk_size`` at a time from keys
  folded per direction, so the features depend only on ``seed`` and
  ``width`` (not on ``block_size``, ``chunk_size`` or which samples are asked
  for) and every call is reproducible.

  Accuracy: ``E[Z Z^T] = K`` (the traced NTK, MEAN convention) exactly, and
  each entry is a mean of ``width`` i.i.d. terms, so its error is
  O(1/sqrt(width)): ``Var[(Z Z^T)_il] <= 3 lam_i lam_l / width`` where
  ``lam_i`` is the top eigenvalue of the per-sample output Gram
  ``J(x_i) J(x_i)^T / T`` (at most ``T * K_ii``; equal to ``K_ii`` for one
  output). Hence ``E ||Z Z^T - K||_F^2 <= 3 (sum_i lam_i)^2 / width``. With
  ``trace_axes=()`` (no sign mixing) ``Z`` is ``[n, c, width]`` and
  ``E[Z_ik . Z_jl] = J_k(x_i) . J_l(x_j)``, with Gaussian (JL) variance
  ``(K_ii,kk K_jj,ll + K_ij,kl^2) / width``.

  Cost: ``width`` forward-mode passes per sample (vmapped ``chunk_size`` at a
  time; memory ``chunk_size * P`` for the directions).

  Args:
    apply_fn: as in ``empirical_ntk_fn``.
    width: number of random features d (>= 1), a few thousand typically.
    seed: int or ``jax.random`` key.
    trace_axes, vmap_axes, trainable: as in ``empirical_ntk_fn``.
    block_size: samples per block, or None.
    chunk_size: random directions per vmapped ``jvp`` (memory/speed knob).
    progress: optional ``progress(done, total)`` per block of samples.

  Returns:
    ``features_fn(x, params, **apply_kwargs) -> [n, *kept_out_shape, width]``.
  """
  if not isinstance(width, (int, np.integer)) or width < 1:
    raise ValueError(f"width: expected an integer >= 1, got {width!r}.")
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(
        f"chunk_size: expected an integer >= 1, got {chunk_size!r}.")
  _check_block_size(block_size)
  _check_vmap_axes(vmap_axes)
  width, chunk = int(width), int(min(chunk_size, width))
  n_chunks = -(-width // chunk)

  def features_fn(x, params, **apply_kwargs):
    key = seed
    if isinstance(key, (int, np.integer)):
      key = jax.random.key(int(key))
    problem, xb, _ = _setup(apply_fn, params, x, None, trace_axes=trace_axes,
                            vmap_axes=vmap_axes, trainable=trainable,
                            kwargs=apply_kwargs)
    layout = problem.layout
    mix = len(layout.traced) > 0 and layout.t > 1

    sizes = [math.prod(l.shape) for l in problem.train]
    offsets = np.cumsum([0] + sizes)
    dtype = jnp.result_type(*problem.train)

    def direction(j):
      # One Gaussian draw per direction j: the parameter-space direction r_j,
      # then T more whose signs are the Rademacher output mix s_j.
      g = jax.random.normal(jax.random.fold_in(key, j),
                            (int(offsets[-1]) + layout.t,), dtype)
      r = [g[offsets[i]:offsets[i + 1]].reshape(l.shape).astype(
          jnp.result_type(l)) for i, l in enumerate(problem.train)]
      return r, jnp.where(g[int(offsets[-1]):] >= 0, 1., -1.).astype(dtype)

    def batch_out(tr, xs):
      if problem.per_sample:
        return jax.vmap(problem.f_sample, in_axes=(None, 0))(tr, xs)
      return problem.f_batch(tr, xs)

    def block(xs):
      _, jvp_fn = jax.linearize(lambda tr: batch_out(tr, xs), problem.train)

      def one_chunk(c):
        js = c * chunk + jnp.arange(chunk)
        r, s = jax.vmap(direction)(js)
        out = jax.vmap(jvp_fn)(r)                     # [chunk, b, T, R]
        if mix:
          out = jnp.einsum("cbtr,ct->cbr", out, s.astype(out.dtype))
          return out                                   # [chunk, b, R]
        return out.reshape(out.shape[:2] + (-1,))      # [chunk, b, T*R]

      cols = jax.lax.map(one_chunk, jnp.arange(n_chunks))
      cols = cols.reshape((n_chunks * chunk,) + cols.shape[2:])[:width]
      z = jnp.moveaxis(cols, 0, -1)                    # [b, R or T*R, width]
      return z / jnp.sqrt(jnp.asarray(layout.t * width, z.dtype))

    z = _blocked_rows(block, xb, block_size, progress)
    z = z.reshape((z.shape[0],) + layout.rshape + (width,))
    _check_finite(z, "projected Jacobian features")
    return z

  return features_fn
