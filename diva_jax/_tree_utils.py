"""Parameter paths, predicates over them, and trainable/frozen partitions.

A parameter's *path* is the '/'-joined sequence of keys that leads to it in the
parameter pytree: ``'params/Dense_0/kernel'`` for a flax linen variable dict,
``'layers/0/kernel'`` for an nnx ``State`` (nnx's trailing ``.value`` attribute
is dropped), ``'0/w'`` for a list of dicts. ``parameter_paths(params)`` lists
them, so a user can see what a predicate will be matched against.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

PyTree = Any
Predicate = Callable[[str], bool]


def _key_str(key) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return str(key.name)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_to_str(path: Sequence[Any]) -> str:
  """Joins a jax key path into a '/'-separated string (nnx '.value' dropped)."""
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and (
      keys[-1].name == "value"):
    keys = keys[:-1]
  return "/".join(_key_str(k) for k in keys)


def parameter_paths(params: PyTree) -> list[str]:
  """Returns the '/'-joined path of every leaf of ``params``, in leaf order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [path_to_str(p) for p, _ in leaves]


def path_matches(*patterns: str) -> Predicate:
  """Predicate: True for paths where any regex in ``patterns`` is found.

  ``re.search`` semantics, so ``path_matches('head')`` selects every
  parameter under a module named ``head``, and
  ``path_matches(r'Dense_[23]/')`` two named layers.

  Args:
    *patterns: one or more regular expressions.

  Returns:
    A callable ``path -> bool``.
  """
  if not patterns:
    raise ValueError("path_matches: expected at least one pattern, got none.")
  compiled = [re.compile(p) for p in patterns]
  return lambda path: any(c.search(path) for c in compiled)


def path_excludes(*patterns: str) -> Predicate:
  """Predicate: True for paths where none of the regexes is found.

  ``path_excludes('BatchNorm', 'LayerNorm')`` linearizes everything except the
  normalisation layers.
  """
  match = path_matches(*patterns)
  return lambda path: not match(path)


def _is_differentiable(leaf) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


class Partition(NamedTuple):
  """Split of a parameter tree into trainable and frozen leaves.

  Attributes:
    paths: '/'-joined path of every leaf, in leaf order.
    mask: per leaf, True when it is trainable.
    treedef: the tree structure of the parameters.
  """
  paths: tuple[str, ...]
  mask: tuple[bool, ...]
  treedef: Any

  def split(self, params: PyTree) -> tuple[list, list]:
    """Returns (trainable leaves, frozen leaves) of ``params``."""
    leaves = self.treedef.flatten_up_to(params)
    train = [l for l, m in zip(leaves, self.mask) if m]
    frozen = [l for l, m in zip(leaves, self.mask) if not m]
    return train, frozen

  def merge(self, train: Sequence, frozen: Sequence) -> PyTree:
    """Inverse of ``split``."""
    train, frozen = iter(train), iter(frozen)
    leaves = [next(train) if m else next(frozen) for m in self.mask]
    return self.treedef.unflatten(leaves)

  @property
  def trainable_paths(self) -> tuple[str, ...]:
    return tuple(p for p, m in zip(self.paths, self.mask) if m)


def make_partition(params: PyTree, trainable: Predicate | None) -> Partition:
  """Builds the trainable/frozen partition of ``params``.

  Args:
    params: the parameter pytree.
    trainable: ``None`` (every floating-point leaf) or a callable over the
      '/'-joined path. Leaves that are not floating point (integer counters,
      RNG state) are always frozen.

  Returns:
    A ``Partition``.

  Raises:
    ValueError: if no floating-point leaf is selected.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = tuple(path_to_str(p) for p, _ in leaves)
  if trainable is not None and not callable(trainable):
    raise ValueError(
        "trainable: expected None or a callable over the '/'-joined parameter "
        f"path, got {type(trainable).__name__}.")
  mask = tuple(
      bool(_is_differentiable(leaf) and (trainable is None or trainable(path)))
      for path, (_, leaf) in zip(paths, leaves))
  if not any(mask):
    shown = ", ".join(paths[:20]) + (" ..." if len(paths) > 20 else "")
    raise ValueError(
        "trainable: expected a predicate selecting at least one floating-point "
        f"parameter, but it selected none of the {len(paths)} leaves "
        f"(paths: {shown}).")
  return Partition(paths, mask, treedef)
