"""The generic NTK implementations: Jacobian contraction and NTK-vector products.

One concern: exact kernels for any ``apply_fn``, leaf by leaf.

* ``jacobian_contraction``: per-sample Jacobians (``vmap(jacrev)``), then the
  sum over parameter leaves of ``J1_leaf . J2_leaf``.
* ``ntk_vector_products``: ``K v = J1 (J2^T v)`` with one ``jax.vjp`` and one
  ``jax.jvp`` per column of the block (columns vmapped); never holds a
  per-sample Jacobian.

Both take a ``diva_jax.ntk.problem.Problem`` and batch-first inputs and return
``[n1, n2, R, R]`` (kept output axes flattened), the MEAN over traced axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diva_jax.ntk.blocks import blocked_pairs
from diva_jax.ntk.problem import Problem

_HIGHEST = jax.lax.Precision.HIGHEST


def leaf_jacobians(problem: Problem, leaves_fn, variables, xb):
  """Per-sample Jacobians ``[b, T, R, L]`` per leaf of ``variables``."""
  if problem.per_sample:
    jac = jax.vmap(jax.jacrev(leaves_fn), in_axes=(None, 0))(variables, xb)
  else:
    jac = jax.jacrev(leaves_fn)(variables, xb)  # [b, T, R, *leaf]
  b = xb.shape[0]
  t, r = problem.layout.t, problem.layout.r
  return [j.reshape(b, t, r, -1) for j in jac]


def contract_leaf_jacobians(j1s, j2s, t):
  """``[b1, b2, R, R]``: sum over leaves of ``J1 . J2``, mean over the T traced."""
  k = 0.
  for j1, j2 in zip(j1s, j2s):
    k = k + jnp.einsum("itrl,jtsl->ijrs", j1, j2, precision=_HIGHEST)
  return k / t


def jacobian_contraction(problem: Problem, x1, x2, block_size, progress):
  fn = problem.f_sample if problem.per_sample else problem.f_batch
  prep = lambda xb: leaf_jacobians(problem, fn, problem.train, xb)
  contract = lambda a, b: contract_leaf_jacobians(a, b, problem.layout.t)
  return blocked_pairs(prep, contract, x1, x2, block_size, progress)


def ntk_vector_products(problem: Problem, x1, x2, block_size, progress):
  t = problem.layout.t

  def contract(xb1, xb2):
    _, jvp1 = jax.linearize(lambda tr: problem.outputs(tr, xb1), problem.train)
    out2, vjp2 = jax.vjp(lambda tr: problem.outputs(tr, xb2), problem.train)
    size2 = math.prod(out2.shape)
    basis = jnp.eye(size2, dtype=out2.dtype).reshape((size2,) + out2.shape)
    cols = jax.vmap(lambda ct: jvp1(vjp2(ct)[0]))(basis)  # [b2*T*R, b1, T, R]
    cols = cols.reshape(out2.shape + cols.shape[1:])        # [b2,T,R,b1,T,R]
    return jnp.einsum("jtsitr->ijrs", cols) / t

  return blocked_pairs(lambda xb: xb, contract, x1, x2, block_size, progress)

