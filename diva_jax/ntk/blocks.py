"""Blocked drivers: a pairwise kernel or a row-wise map computed block by block.

One concern: memory. With ``block_size=b`` the rows of x1 and x2 are split
into blocks of ``b`` (the last one padded by repeating its last row) and
processed sequentially with ``lax.map``, so only one ``[b, b, ...]`` block
(plus its per-block state) is in flight. ``progress(done, total)`` is called
after each block through ``jax.debug.callback``, so it works eagerly and
under ``jax.jit``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pad_rows(x, multiple):
  n = x.shape[0]
  pad = (-n) % multiple
  if pad:
    # Repeat the last row: valid input for any network (zeros might not be).
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
  return x


def blocked_pairs(prep, contract, x1, x2, block_size, progress):
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
    s1 = prep(x1)
    out = contract(s1, s1 if x2 is x1 else prep(x2))
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


def blocked_rows(fn, x, block_size, progress):
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
