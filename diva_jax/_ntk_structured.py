"""The structured NTK implementation: flax linen ``nn.Dense`` layers in closed form.

One concern: the ``'structured'`` implementation of ``diva_jax.ntk``. A Dense
layer ``y = h W + b`` contributes ``(h1 . h2) (d1 . d2)`` to the kernel, with
``h`` its input activations and ``d = df/dy`` the output cotangents, so no
Jacobian of W is formed. Activations and cotangents are captured with
``flax.linen.intercept_methods``: a zero perturbation is added to each Dense
output and differentiated. Every parameter leaf that is not the kernel or bias
of a Dense called exactly once falls back to the Jacobian contraction for that
leaf only, so the result is always exact. Caveat (weight tying): a Dense
kernel also used outside its own call is under-counted.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diva_jax._ntk_blocks import blocked_pairs
from diva_jax._ntk_contraction import contract_leaf_jacobians
from diva_jax._ntk_contraction import jacobian_contraction
from diva_jax._ntk_problem import Problem

_HIGHEST = jax.lax.Precision.HIGHEST


class _DenseCall(NamedTuple):
  kernel_leaf: int | None  # index into the trainable leaves, or None
  bias_leaf: int | None


def _is_linen_dense_call(context) -> bool:
  return (context.method_name == "__call__"
          and type(context.module) is nn.Dense)  # pylint: disable=unidiomatic-typecheck


def _discover_dense_calls(problem: Problem, x_probe) -> list:
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


def structured(problem: Problem, x1, x2, block_size, progress):
  if not problem.per_sample:
    return jacobian_contraction(problem, x1, x2, block_size, progress)
  calls = _discover_dense_calls(problem, x1[0])
  structured_leaves = {l for c in calls if c is not None for l in c
                       if l is not None}
  if not structured_leaves:
    return jacobian_contraction(problem, x1, x2, block_size, progress)
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
    k = contract_leaf_jacobians(g1s, g2s, t) if g1s else 0.
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

  return blocked_pairs(prep, contract, x1, x2, block_size, progress)
