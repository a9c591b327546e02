"""Synthetic label noise: uniform and class-conditional, seeded, with the flipped mask.

Class-conditional noise is described by a row-stochastic transition matrix
``T[i, j] = P(noisy = j | clean = i)`` ([num_classes, num_classes]); uniform noise at rate
``r`` is the special case ``T = (1 - r) I + r / (k - 1) (1 - I)``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NoisyLabels(NamedTuple):
  """Corrupted labels and which of them changed.

  Attributes:
    labels: ``[n]`` int64 noisy labels.
    flipped: ``[n]`` bool, True where ``labels != clean labels``.
  """
  labels: np.ndarray
  flipped: np.ndarray


def _check_labels(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a [n] integer array; got shape {labels.shape}, "
                     f"dtype {labels.dtype}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2; got {num_classes}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes - 1}]; got range "
                     f"[{labels.min()}, {labels.max()}]")
  return labels.astype(np.int64)


def _check_rate(rate: float) -> None:
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"noise rate must be in [0, 1]; got {rate}")


def uniform_label_noise(labels: np.ndarray, num_classes: int, rate: float,
                        seed: int) -> NoisyLabels:
  """Flips exactly ``round(rate * n)`` labels, each to a uniformly drawn *other* class.

  Args:
    labels: ``[n]`` clean labels in ``[0, num_classes)``.
    num_classes: number of classes ``k``.
    rate: fraction of samples to corrupt, in [0, 1].
    seed: NumPy ``default_rng`` seed.

  Returns:
    :class:`NoisyLabels`; ``flipped.sum() == round(rate * n)``.
  """
  labels = _check_labels(labels, num_classes)
  _check_rate(rate)
  rng = np.random.default_rng(seed)
  idx = rng.choice(labels.size, round(rate * labels.size), replace=False)
  noisy = labels.copy()
  # An offset in 1..k-1 (mod k) never maps a class onto itself.
  noisy[idx] = (labels[idx] + rng.integers(1, num_classes, idx.size)) % num_classes
  return NoisyLabels(noisy, noisy != labels)


def uniform_transition(num_classes: int, rate: float) -> np.ndarray:
  """``[k, k]`` transition: keep with ``1 - rate``, else any other class equally likely."""
  _check_rate(rate)
  t = np.full((num_classes, num_classes), rate / (num_classes - 1))
  np.fill_diagonal(t, 1.0 - rate)
  return t


def pairwise_transition(num_classes: int, rate: float,
                        pairs: dict[int, int] | None = None) -> np.ndarray:
  """``[k, k]`` pair-flip transition: class ``i`` becomes ``pairs[i]`` with prob ``rate``.

  Args:
    num_classes: ``k``.
    rate: flip probability for classes in ``pairs``.
    pairs: ``{source class: target class}``; default ``{i: (i + 1) % k}`` (all classes).

  Returns:
    A row-stochastic ``[k, k]`` float64 matrix.
  """
  _check_rate(rate)
  pairs = {i: (i + 1) % num_classes for i in range(num_classes)} if pairs is None else pairs
  t = np.eye(num_classes)
  for src, dst in pairs.items():
    if not (0 <= src < num_classes and 0 <= dst < num_classes) or src == dst:
      raise ValueError(f"pair {src} -> {dst} invalid for {num_classes} classes")
    t[src, src] = 1.0 - rate
    t[src, dst] = rate
  return t


def class_conditional_label_noise(labels: np.ndarray, transition: np.ndarray,
                                  seed: int) -> NoisyLabels:
  """Draws each noisy label from the row ``transition[clean label]``.

  Args:
    labels: ``[n]`` clean labels.
    transition: ``[k, k]`` row-stochastic, ``T[i, j] = P(noisy = j | clean = i)``.
    seed: NumPy ``default_rng`` seed.

  Returns:
    :class:`NoisyLabels`.
  """
  t = np.asarray(transition, np.float64)
  if t.ndim != 2 or t.shape[0] != t.shape[1]:
    raise ValueError(f"transition must be a square [k, k] matrix; got shape {t.shape}")
  if (t < 0).any() or not np.allclose(t.sum(1), 1.0, atol=1e-8):
    raise ValueError("transition rows must be probability vectors (non-negative, sum 1); "
                     f"got row sums {np.round(t.sum(1), 6).tolist()}")
  labels = _check_labels(labels, t.shape[0])
  u = np.random.default_rng(seed).random(labels.size)
  cdf = np.cumsum(t, axis=1)[labels]
  noisy = np.minimum((u[:, None] >= cdf).sum(1), t.shape[0] - 1).astype(np.int64)
  return NoisyLabels(noisy, noisy != labels)
