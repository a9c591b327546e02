"""Deterministic and seeded splits: hash-defined train/test, stratified core/pool.

Train/test membership of a builder's example is a pure function of its id (a SHA-256 of
``salt:key``), so it does not depend on TFDS's write order, NumPy's RNG or the machine.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np


def hash_rank(keys: Sequence[str], salt: str = "") -> np.ndarray:
  """Ranks ``keys`` by SHA-256 of ``f"{salt}:{key}"``: a reproducible pseudo-random order.

  Returns:
    ``[n]`` int64 permutation: ``order[i]`` is the position of ``keys[i]`` in hash order.
  """
  digests = [hashlib.sha256(f"{salt}:{k}".encode()).digest() for k in keys]
  order = sorted(range(len(keys)), key=digests.__getitem__)
  rank = np.empty(len(keys), np.int64)
  rank[order] = np.arange(len(keys))
  return rank


def _per_class_counts(labels: np.ndarray, total: int) -> dict[int, int]:
  """Splits ``total`` over classes proportionally to their sizes (largest remainder)."""
  classes, sizes = np.unique(labels, return_counts=True)
  exact = sizes * total / labels.size
  counts = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
    counts[i] += 1
  return dict(zip(classes.tolist(), counts.tolist()))


def stratified_holdout_mask(labels: np.ndarray, keys: Sequence[str], fraction: float,
                            salt: str = "holdout") -> np.ndarray:
  """Marks a stratified ``fraction`` of examples as held out, chosen by key hash.

  Within each class, examples are ordered by ``hash_rank(keys, salt)`` and the first
  ``round(fraction * class size)`` (largest-remainder rounding over classes) are held out.

  Args:
    labels: ``[n]`` int class labels.
    keys: ``n`` stable example identifiers.
    fraction: in (0, 1).
    salt: changes the draw.

  Returns:
    ``[n]`` bool, True for held-out (test) examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or len(keys) != labels.size:
    raise ValueError(f"labels [n] and n keys expected; got labels shape {labels.shape} and "
                     f"{len(keys)} keys")
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"fraction must be in (0, 1); got {fraction}")
  rank = hash_rank(keys, salt)
  mask = np.zeros(labels.size, bool)
  for c, k in _per_class_counts(labels, round(fraction * labels.size)).items():
    members = np.flatnonzero(labels == c)
    mask[members[np.argsort(rank[members])[:k]]] = True
  return mask


class CorePoolSplit(NamedTuple):
  """Indices of a core set and of the remaining pool, each sorted ascending.

  Attributes:
    core: ``[n_core]`` int64 indices.
    pool: ``[n - n_core]`` int64 indices.
  """
  core: np.ndarray
  pool: np.ndarray


def core_pool_split(labels: np.ndarray, core_size: int | float, seed: int,
                    stratified: bool = True) -> CorePoolSplit:
  """Splits examples into a small core set and a pool (e.g. for data selection).

  Args:
    labels: ``[n]`` int labels.
    core_size: number of core examples (int), or a fraction of ``n`` in (0, 1) (float).
    seed: NumPy ``default_rng`` seed.
    stratified: keep class proportions in the core (largest-remainder rounding).

  Returns:
    A :class:`CorePoolSplit`.
  """
  labels = np.asarray(labels)
  n = labels.size
  if labels.ndim != 1 or n == 0:
    raise ValueError(f"labels must be a non-empty [n] array; got shape {labels.shape}")
  if isinstance(core_size, float):
    if not 0.0 < core_size < 1.0:
      raise ValueError(f"a fractional core_size must be in (0, 1); got {core_size}")
    core_size = round(core_size * n)
  if not 0 < core_size < n:
    raise ValueError(f"core_size must be in [1, {n - 1}] for {n} examples; got {core_size}")
  rng = np.random.default_rng(seed)
  if stratified:
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c, k in _per_class_counts(labels, core_size).items()]
    core = np.concatenate(chosen)
  else:
    core = rng.choice(n, core_size, replace=False)
  mask = np.zeros(n, bool)
  mask[core] = True
  return CorePoolSplit(np.flatnonzero(mask), np.flatnonzero(~mask))
