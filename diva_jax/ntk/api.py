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
* ``'structured'`` (default): reads the jaxpr of ``apply_fn``, whatever wrote it
  (plain JAX, flax linen, nnx), and follows every trainable leaf through views (reshape,
  transpose, slices, dtype casts, scaling by a scalar) to the equations consuming it. A
  leaf consumed only by ``dot_general`` (dense layers, einsums, attention projections, W in
  either slot) or ``conv_general_dilated`` (any strides, padding, dilation, feature
  groups, layout) contributes ``sum <a1, a2> <d1, d2>`` over positions, with ``a`` the
  layer's input (image patches for a convolution) and ``d = df/dy`` the cotangents of its
  output, so no Jacobian is formed; a cost model per leaf picks instead the explicit
  Jacobian ``a (x) d`` when that is cheaper (high-resolution or thin convolutions). A leaf
  used several times (weight tying) sums over its uses, cross terms included. Biases added
  to such a layer's output join it as a column of ones. Other leaves (norm scales,
  embeddings, anything under ``scan``/``while``/``cond`` or a ``custom_jvp``) take their
  Jacobian from the same backward pass: the result is always exact. ``ntk_plan`` tells
  which path each leaf takes. Samples must be independent (``vmap_axes`` an int);
  otherwise this is the Jacobian contraction.

Blocks: with ``block_size=b`` the rows of x1 and x2 are processed in blocks of
``b`` (``lax.map``, i.e. sequentially), so the memory in flight is that of one
``[b, b]`` block (plus per-block Jacobians), and ``n`` is limited by the
output. ``progress(done, total)`` is called after each block, through
``jax.debug.callback``, so it works eagerly and under ``jax.jit``.

The library never jits: wrap the returned ``kernel_fn`` / ``features_fn`` in
``jax.jit`` (``params`` and inputs are traced arguments).

This module is the public API (``empirical_ntk_fn``, and the feature maps
re-exported from ``diva_jax.ntk.feature_maps``). The parts behind it:
``diva_jax.ntk.problem`` (validation, output layout, per-sample function),
``blocks`` (blocked drivers), ``contraction`` (Jacobian contraction, NTK-vector products),
and the structured path: ``jaxpr`` (flat jaxpr, interpreter, each leaf's uses), ``rules``
(per-primitive views and sites), ``plan`` (per-leaf decisions and cost model),
``structured`` (the kernel from activations and cotangents).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from diva_jax.ntk.contraction import jacobian_contraction
from diva_jax.ntk.contraction import ntk_vector_products
from diva_jax.ntk.feature_maps import jacobian_features
from diva_jax.ntk.feature_maps import projected_jacobian_features
from diva_jax.ntk.problem import Progress
from diva_jax.ntk.problem import check_block_size
from diva_jax.ntk.problem import check_finite_output
from diva_jax.ntk.problem import check_vmap_axes
from diva_jax.ntk.problem import setup
from diva_jax.ntk.plan import LeafPlan
from diva_jax.ntk.structured import plan_for
from diva_jax.ntk.structured import structured

__all__ = [
    "IMPLEMENTATIONS",
    "Progress",
    "LeafPlan",
    "empirical_ntk_fn",
    "jacobian_features",
    "ntk_plan",
    "projected_jacobian_features",
]

IMPLEMENTATIONS = ("structured", "jacobian_contraction", "ntk_vector_products")

_IMPLS = {
    "structured": structured,
    "jacobian_contraction": jacobian_contraction,
    "ntk_vector_products": ntk_vector_products,
}


def _check_implementation(implementation):
  if implementation not in _IMPLS:
    raise ValueError(
        f"implementation: expected one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}.")



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
  check_block_size(block_size)
  check_vmap_axes(vmap_axes)
  impl = _IMPLS[implementation]

  def kernel_fn(x1, x2, params, **apply_kwargs):
    problem, x1b, x2b = setup(apply_fn, params, x1, x2,
                              trace_axes=trace_axes, vmap_axes=vmap_axes,
                              trainable=trainable, kwargs=apply_kwargs)
    k = impl(problem, x1b, x1b if x2b is None else x2b, block_size, progress)
    k = problem.layout.unfold_kernel(k)
    check_finite_output(k, "empirical NTK")
    return k

  return kernel_fn


def ntk_plan(
    apply_fn: Callable[..., jax.Array],
    params,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    trace_axes: Sequence[int] = (-1,),
    vmap_axes: int | None = 0,
    trainable: Callable[[str], bool] | None = None,
    block_size: int | None = None,
    **apply_kwargs,
) -> list[LeafPlan]:
  """How the ``'structured'`` implementation treats each trainable leaf.

  Traces ``apply_fn`` (abstractly, nothing is computed) and returns, per trainable leaf
  in ``jax.tree_util`` order, a ``LeafPlan``: its ``path``; ``kind``, one of
  ``'structured'`` (contracted from activations and cotangents, no Jacobian),
  ``'explicit'`` (Jacobian formed: from activations and cotangents when the cost model
  prefers it, from the backward pass for elementwise uses such as biases and norm scales)
  or ``'fallback'`` (no rule: Jacobian from the backward pass, still exact); ``reason``;
  ``sites``, the primitives consuming it; and the two costs (multiply-adds per block) of
  the cost model. Arguments are those of ``empirical_ntk_fn`` and its ``kernel_fn``.
  With ``vmap_axes=None`` every leaf is ``'fallback'`` (Jacobian contraction).
  """
  check_block_size(block_size)
  check_vmap_axes(vmap_axes)
  problem, x1b, x2b = setup(apply_fn, params, x1, x2, trace_axes=trace_axes,
                            vmap_axes=vmap_axes, trainable=trainable, kwargs=apply_kwargs)
  if not problem.per_sample:
    return [LeafPlan(p, "fallback", "vmap_axes=None", (), None, None)
            for p in problem.part.trainable_paths]
  plan = plan_for(problem, x1b, x1b if x2b is None else x2b, block_size)
  return list(plan.leaves)
