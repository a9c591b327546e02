"""Per-primitive rules of the structured NTK: views of a weight, and the sites that consume it.

One concern: what a single jaxpr equation does to a trainable leaf ``W``.

* A *view* maps ``W`` to ``W'`` without mixing entries: reshape, transpose, squeeze,
  expand_dims, rev, slice, convert_element_type, copy, a size-1 ``broadcast_in_dim``, and a
  scaling by a scalar that does not depend on any trainable leaf (``neg``, ``mul``, ``div``).
  Views act on an integer array of W's flat indices (so a leaf's uses can be compared entry
  by entry) and contribute a scalar factor, folded into the activations.
* A *site* is the first non-view equation, linear in ``W'``. Its canonical form is

      y[g, b, c] = sum_k A[g, b, k] W'[g, k, c]

  (g: W's batch dims, b: positions, k: contracted, c: W's free dims). Rules here:
  ``dot_general`` (W' in either slot; the other operand is A) and ``conv_general_dilated``
  (W' the kernel, ``batch_group_count == 1``; A = ``conv_general_dilated_patches`` of the
  input, g = the feature groups). A site gives three maps: ``w_canon`` (W' to ``[g, K, C]``,
  applied to index arrays), ``a_canon`` (operand to ``[g, B, K]``) and ``d_canon``
  (cotangents ``[..., *y]`` to ``[..., g, B, C]``). ``add``/``sub``/``mul`` sites are
  *elementwise*: their Jacobian is formed directly (biases, norm scales). Everything else
  has no rule.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

ELEMENTWISE = frozenset({"add", "sub", "mul", "add_any"})


class ViewStep(NamedTuple):
  """One view W -> W'. ``index`` maps an index array; ``factor`` is None, a constant, or
  ``('var', id, power)`` read at run time."""
  index: Callable[[np.ndarray], np.ndarray]
  factor: Any = None


def _identity(idx):
  return idx


def _shape(atom, avals):
  return tuple(avals[atom].shape) if isinstance(atom, int) else tuple(np.shape(atom.val))


def _broadcast_in_dim(idx, shape, dims):
  expanded = [1] * len(shape)
  for d, s in zip(dims, idx.shape):
    expanded[d] = s
  return np.broadcast_to(idx.reshape(expanded), shape)


def view_step(eqn, slot: int, avals, scalar_source) -> ViewStep | None:
  """The view ``eqn`` applies to its operand ``slot``, or None when it is not a view.

  Args:
    eqn: a flat equation (``diva_jax.ntk.jaxpr.Eqn``).
    slot: which operand carries the (view of the) leaf.
    avals: ``var id -> aval``.
    scalar_source: ``atom -> None | ('lit', value) | ('var', id)``: the scalar an operand
      is a broadcast of, when it does not depend on a trainable leaf.
  """
  name, p = eqn.prim.name, eqn.params
  out_shape = tuple(avals[eqn.outvars[0]].shape)
  if name == "reshape" and p.get("dimensions") is None:
    return ViewStep(lambda idx: idx.reshape(p["new_sizes"]))
  if name == "transpose":
    return ViewStep(lambda idx: np.transpose(idx, p["permutation"]))
  if name == "squeeze":
    return ViewStep(lambda idx: np.squeeze(idx, tuple(p["dimensions"])))
  if name == "expand_dims":
    return ViewStep(lambda idx: np.expand_dims(idx, tuple(p["dimensions"])))
  if name == "rev":
    return ViewStep(lambda idx: np.flip(idx, tuple(p["dimensions"])))
  if name == "slice":
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    sl = tuple(slice(a, b, s) for a, b, s in
               zip(p["start_indices"], p["limit_indices"], strides))
    return ViewStep(lambda idx: idx[sl])
  if name == "convert_element_type":
    if not jnp.issubdtype(p["new_dtype"], jnp.inexact):
      return None
    return ViewStep(_identity)
  if name in ("copy", "copy_p"):
    return ViewStep(_identity)
  if name == "broadcast_in_dim":
    return ViewStep(lambda idx: _broadcast_in_dim(idx, p["shape"], p["broadcast_dimensions"]))
  if name == "neg":
    return ViewStep(_identity, ("const", -1.0))
  if name in ("mul", "div") and len(eqn.invars) == 2:
    if name == "div" and slot != 0:
      return None
    other = eqn.invars[1 - slot]
    if _shape(eqn.invars[slot], avals) != out_shape:
      return None  # W' itself is broadcast by the op: not a view
    src = scalar_source(other)
    if src is None:
      return None
    power = 1 if name == "mul" else -1
    if src[0] == "lit":
      return ViewStep(_identity, ("const", float(np.asarray(src[1])) ** power))
    return ViewStep(_identity, ("var", src[1], power))
  return None


class Site(NamedTuple):
  """One use of a view W' of a leaf by a structured rule (see the module docstring)."""
  kind: str          # 'dot_general' or 'conv'
  eqn: int           # index of the equation in the flat program
  operand: int       # slot of the activation operand A
  g: int
  b: int
  k: int
  c: int
  w_canon: Callable  # W'-shaped array -> [g, K, C]
  a_canon: Callable  # [..., *operand_shape] -> [..., g, B, K]
  d_canon: Callable  # [..., *y_shape] -> [..., g, B, C]


def _prod(shape, axes):
  return int(math.prod(shape[a] for a in axes))


def _trailing(perm, shape):
  """Transpose then reshape of the trailing ``len(perm)`` dims (any leading dims kept)."""
  def apply(x):
    lead = x.ndim - len(perm)
    xp = np if isinstance(x, np.ndarray) else jnp
    x = xp.transpose(x, tuple(range(lead)) + tuple(lead + a for a in perm))
    return x.reshape(x.shape[:lead] + tuple(shape))
  return apply


def _dot_site(eqn, k_eqn, slot, avals) -> Site:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  o = 1 - slot
  w_shape = _shape(eqn.invars[slot], avals)
  o_shape = _shape(eqn.invars[o], avals)
  wc, wb = (lc, rc)[slot], (lb, rb)[slot]
  oc, ob = (lc, rc)[o], (lb, rb)[o]
  wc, wb, oc, ob = map(tuple, (wc, wb, oc, ob))
  w_free = tuple(a for a in range(len(w_shape)) if a not in wc + wb)
  o_free = tuple(a for a in range(len(o_shape)) if a not in oc + ob)
  g, k = _prod(w_shape, wb), _prod(w_shape, wc)
  c, b = _prod(w_shape, w_free), _prod(o_shape, o_free)
  w_perm = wb + wc + w_free
  nb, nwf, nof = len(wb), len(w_free), len(o_free)
  if slot == 1:   # y = [batch, other free (b), W free (c)]
    y_perm = tuple(range(nb + nof + nwf))
  else:           # y = [batch, W free (c), other free (b)]
    y_perm = (tuple(range(nb)) + tuple(range(nb + nwf, nb + nwf + nof))
              + tuple(range(nb, nb + nwf)))
  return Site(
      "dot_general", k_eqn, o, g, b, k, c,
      w_canon=lambda w: np.transpose(w, w_perm).reshape(g, k, c),
      a_canon=_trailing(ob + o_free + oc, (g, b, k)),
      d_canon=_trailing(y_perm, (g, b, c)))


def _conv_site(eqn, k_eqn, avals) -> Site:
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  w_shape = _shape(eqn.invars[1], avals)
  y_shape = tuple(avals[eqn.outvars[0]].shape)
  g = int(p["feature_group_count"])
  n_out = w_shape[rhs_spec[0]]
  filt = tuple(w_shape[d] for d in rhs_spec[2:])
  k = w_shape[rhs_spec[1]] * int(math.prod(filt))
  c = n_out // g
  b = int(math.prod(y_shape)) // n_out
  y_perm = (out_spec[1], out_spec[0]) + tuple(out_spec[2:])  # [O, N, *spatial]

  def w_canon(w):
    w = np.transpose(w, rhs_spec).reshape(g, c, k)
    return np.transpose(w, (0, 2, 1))

  def a_one(x):
    patches = jax.lax.conv_general_dilated_patches(
        x, filt, p["window_strides"], p["padding"], lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"], dimension_numbers=p["dimension_numbers"],
        precision=_HIGHEST)  # [*out layout], channels (C_in, *filt) channel-major
    patches = jnp.transpose(patches, y_perm).reshape(g, k, b)
    return jnp.swapaxes(patches, -1, -2)

  def a_canon(x):  # [..., *lhs_shape]
    lead = x.ndim - len(y_shape)
    flat = x.reshape((-1,) + x.shape[lead:])
    return jax.vmap(a_one)(flat).reshape(x.shape[:lead] + (g, b, k))

  def d_canon(d):
    d = _trailing(y_perm, (g, c, b))(d)
    return (np if isinstance(d, np.ndarray) else jnp).swapaxes(d, -1, -2)

  return Site("conv", k_eqn, 0, g, b, k, c, w_canon, a_canon, d_canon)


def site_rule(eqn, k_eqn: int, slot: int, avals) -> Site | str | None:
  """The structured rule of ``eqn`` for a leaf view in operand ``slot``.

  Returns:
    A ``Site``; ``'elementwise'`` for add/sub/mul (Jacobian formed directly); or None (no
    rule: the leaf falls back to its explicit Jacobian).
  """
  name = eqn.prim.name
  if eqn.prim.multiple_results:
    return None
  if name == "dot_general":
    return _dot_site(eqn, k_eqn, slot, avals)
  if name == "conv_general_dilated":
    if slot != 1 or int(eqn.params["batch_group_count"]) != 1:
      return None
    return _conv_site(eqn, k_eqn, avals)
  if name in ELEMENTWISE or (name == "div" and slot == 0) or name == "neg":
    return "elementwise"
  return None
