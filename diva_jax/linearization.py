"""First-order Taylor expansion of a network around its pretrained parameters.

``linearize(apply_fn, params)`` mirrors ``neural_tangents.linearize``:

    f_lin(w, x) = f(w0, x) + J(x) (w - w0),    J(x) = d f(w0, x) / d w,

computed with one ``jax.jvp`` (no Jacobian is materialised). A ``trainable``
predicate over the '/'-joined parameter path chooses which parameters are
linearized; the others stay frozen at their pretrained value ``w0``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diva_jax import _tree_utils
from diva_jax._tree_utils import parameter_paths  # noqa: F401  (re-exported)
from diva_jax._tree_utils import path_excludes  # noqa: F401
from diva_jax._tree_utils import path_matches  # noqa: F401

PyTree = Any


def check_params_like(params: PyTree, reference: PyTree,
                      what: str = "params") -> None:
  """Raises ValueError if ``params`` differs from ``reference`` in structure/shape."""
  ref_leaves, ref_def = jax.tree_util.tree_flatten(reference)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  if treedef != ref_def:
    raise ValueError(
        f"{what}: expected a pytree with the structure of the pretrained "
        f"parameters ({ref_def}), got {treedef}.")
  paths = _tree_utils.parameter_paths(reference)
  for path, a, b in zip(paths, leaves, ref_leaves):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
          f"{what}: parameter '{path}' expected shape {jnp.shape(b)}, got "
          f"{jnp.shape(a)}.")


def linearize(
    apply_fn: Callable[..., Any],
    params: PyTree,
    *,
    trainable: Callable[[str], bool] | None = None,
) -> Callable[..., Any]:
  """Returns the linearization of ``apply_fn`` around ``params``.

  Same shape as ``neural_tangents.linearize``. ``apply_fn(params, *args,
  **kwargs)`` may be a flax linen ``model.apply``, an nnx model split into
  ``(graphdef, state)`` and merged inside a lambda, or any plain function.

  Example:
    >>> f_lin = linearize(model.apply, variables,
    ...                   trainable=path_matches('head'))
    >>> y = jax.jit(f_lin)(new_variables, x)   # == model.apply(variables, x)
    ...                                        #    + J_head(x) (new - old)

  Args:
    apply_fn: ``apply_fn(params, *args, **kwargs) -> pytree of arrays``.
    params: the expansion point ``w0`` (pretrained parameters).
    trainable: optional predicate over the '/'-joined parameter path (see
      ``diva_jax.path_matches``); ``None`` linearizes every floating-point leaf.
      Leaves not selected stay at their value in ``params``: whatever the
      caller passes for them to ``f_lin`` is ignored.

  Returns:
    ``f_lin(params, *args, **kwargs)``, a pure function with the output
    structure of ``apply_fn``; exact at ``params``, linear in the selected
    parameters, usable under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.

  Raises:
    ValueError: if ``trainable`` selects no floating-point parameter (at build
      time), or if ``f_lin`` is called with parameters whose structure or
      shapes differ from ``params`` (at call time).
  """
  part = _tree_utils.make_partition(params, trainable)
  train0, frozen0 = part.split(params)

  def f_lin(new_params: PyTree, *args, **kwargs):
    check_params_like(new_params, params)
    train, _ = part.split(new_params)
    delta = [jnp.asarray(t, jnp.result_type(t0)) - t0
             for t, t0 in zip(train, train0)]

    def f(tr):
      return apply_fn(part.merge(tr, frozen0), *args, **kwargs)

    out, tangent = jax.jvp(f, (train0,), (delta,))
    return jax.tree_util.tree_map(jnp.add, out, tangent)

  return f_lin
