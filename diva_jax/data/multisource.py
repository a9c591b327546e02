"""A dataset whose samples come from several sources or modalities, each tagged."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class MultiSourceDataset:
  """Samples (images or features) with labels and the index of the source of each.

  Attributes:
    inputs: ``[n, ...]`` images or features (same trailing shape for all sources).
    labels: ``[n]`` int64 labels.
    sources: ``[n]`` int64, index into ``source_names``.
    source_names: one name per source (e.g. ``("mnist5k", "digits")``).
    class_names: optional names of the label classes.
  """
  inputs: np.ndarray
  labels: np.ndarray
  sources: np.ndarray
  source_names: tuple[str, ...]
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    n = np.shape(self.inputs)[0] if np.ndim(self.inputs) else -1
    if np.shape(self.labels) != (n,) or np.shape(self.sources) != (n,):
      raise ValueError(f"inputs [n, ...], labels [n] and sources [n] must agree; got "
                       f"{np.shape(self.inputs)}, {np.shape(self.labels)}, "
                       f"{np.shape(self.sources)}")
    if len(set(self.source_names)) != len(self.source_names):
      raise ValueError(f"source names must be unique; got {self.source_names}")
    if n and (np.min(self.sources) < 0 or np.max(self.sources) >= len(self.source_names)):
      raise ValueError(f"sources must index into {len(self.source_names)} source names; "
                       f"got range [{np.min(self.sources)}, {np.max(self.sources)}]")

  @classmethod
  def concatenate(cls, parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  class_names: Sequence[str] | None = None) -> "MultiSourceDataset":
    """Builds one dataset from ``{source name: (inputs [n_s, ...], labels [n_s])}``.

    Sources keep the mapping's order; labels must share one label space.
    """
    if not parts:
      raise ValueError("at least one source is needed")
    names = tuple(parts)
    shapes = {name: np.shape(x)[1:] for name, (x, _) in parts.items()}
    if len(set(shapes.values())) != 1:
      raise ValueError(f"all sources need the same per-sample shape; got {shapes} "
                       "(extract features or resize images first)")
    inputs = np.concatenate([np.asarray(x) for x, _ in parts.values()])
    labels = np.concatenate([np.asarray(y, np.int64) for _, y in parts.values()])
    sources = np.concatenate([np.full(len(y), i, np.int64)
                              for i, (_, y) in enumerate(parts.values())])
    return cls(inputs, labels, sources, names,
               None if class_names is None else tuple(class_names))

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def select(self, index: np.ndarray) -> "MultiSourceDataset":
    """The subset given by an index array or a ``[n]`` bool mask (sources kept)."""
    return dataclasses.replace(self, inputs=self.inputs[index], labels=self.labels[index],
                               sources=self.sources[index])

  def source_mask(self, name: str) -> np.ndarray:
    """``[n]`` bool mask of the samples from source ``name``."""
    if name not in self.source_names:
      raise ValueError(f"unknown source {name!r}; known: {list(self.source_names)}")
    return self.sources == self.source_names.index(name)

  def source_counts(self) -> dict[str, int]:
    """Number of samples per source."""
    counts = np.bincount(self.sources, minlength=len(self.source_names))
    return dict(zip(self.source_names, counts.tolist()))
