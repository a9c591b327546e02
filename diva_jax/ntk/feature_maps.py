"""Jacobian feature maps: exact and randomly projected per-sample Jacobians.

One concern: features ``Z`` with ``Z Z^T`` equal (exactly, or in expectation)
to the traced empirical NTK of ``diva_jax.ntk.api.empirical_ntk_fn`` with the same
arguments (the MEAN convention), for the primal form of the LOO functions.
Public through ``diva_jax.ntk.api``; conventions are documented there.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.ntk.blocks import blocked_rows
from diva_jax.ntk.contraction import leaf_jacobians
from diva_jax.ntk.problem import Progress
from diva_jax.ntk.problem import check_block_size
from diva_jax.ntk.problem import check_finite_output
from diva_jax.ntk.problem import check_vmap_axes
from diva_jax.ntk.problem import setup
from diva_jax.ntk.structured import leaf_jacobians_fn


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
  networks, ``projected_jacobian_features`` otherwise. With ``vmap_axes`` an int, the
  Jacobians of dense and conv weights are formed from their input activations (image
  patches) and output cotangents, as in the ``'structured'`` NTK (``ntk_plan``); the other
  leaves' from the backward pass.

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
  check_block_size(block_size)
  check_vmap_axes(vmap_axes)

  def features_fn(x, params, **apply_kwargs):
    problem, xb, _ = setup(apply_fn, params, x, None, trace_axes=trace_axes,
                           vmap_axes=vmap_axes, trainable=trainable,
                           kwargs=apply_kwargs)
    t, layout = problem.layout.t, problem.layout
    if problem.per_sample:  # dense and conv leaves from activations and cotangents
      jacobians = leaf_jacobians_fn(problem, jax.ShapeDtypeStruct(xb.shape[1:], xb.dtype))
    else:
      jacobians = lambda xs: leaf_jacobians(problem, problem.f_batch, problem.train, xs)

    def block(xs):
      jac = jnp.concatenate(jacobians(xs), axis=-1)     # [b, T, R, P]
      z = jnp.swapaxes(jac, 1, 2).reshape(xs.shape[0], layout.r, -1)
      return z / jnp.sqrt(jnp.asarray(t, z.dtype))

    z = blocked_rows(block, xb, block_size, progress)
    z = z.reshape((z.shape[0],) + layout.rshape + (z.shape[-1],))
    check_finite_output(z, "Jacobian features")
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
  check_block_size(block_size)
  check_vmap_axes(vmap_axes)
  width, chunk = int(width), int(min(chunk_size, width))
  n_chunks = -(-width // chunk)

  def features_fn(x, params, **apply_kwargs):
    key = seed
    if isinstance(key, (int, np.integer)):
      key = jax.random.key(int(key))
    problem, xb, _ = setup(apply_fn, params, x, None, trace_axes=trace_axes,
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

    def block(xs):
      _, jvp_fn = jax.linearize(lambda tr: problem.outputs(tr, xs),
                                problem.train)

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

    z = blocked_rows(block, xb, block_size, progress)
    z = z.reshape((z.shape[0],) + layout.rshape + (width,))
    check_finite_output(z, "projected Jacobian features")
    return z

  return features_fn
