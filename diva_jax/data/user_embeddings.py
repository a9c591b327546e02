"""Precomputed embeddings as a curation source: a .npz (features, labels, optional ids and
class_names) or a .npy of features with a labels file; validated at the boundary (NaN rows,
shapes, labels not in class_names are refused with the rows named)."""

from __future__ import annotations

import os
from typing import NamedTuple
import numpy as np

from diva_jax.data.user_common import _check_unique
from diva_jax.data.user_common import _listing
from diva_jax.data.user_common import _one_sample_warning
from diva_jax.data.user_common import source_kind


class UserEmbeddings(NamedTuple):
  """Labelled precomputed features.

  Attributes:
    features: ``[n, d]`` float32 or float64 as stored (other numeric dtypes -> float32).
    labels: ``[n]`` int64 indices into ``class_names``.
    class_names: the label space.
    ids: per sample, from the file's ``ids`` key, else ``"0"`` .. ``"n-1"``.
    warnings: human-readable notes.
  """
  features: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  ids: list[str]
  warnings: list[str]


def _read_labels_file(path: str) -> np.ndarray:
  """A ``.npy`` array, or a text file of one label per line (ints if all parse)."""
  if not os.path.isfile(path):
    raise ValueError(f"labels file {path!r} does not exist")
  if path.lower().endswith(".npy"):
    return _np_load(path)
  with open(path, encoding="utf-8-sig") as f:
    lines = [line.strip() for line in f.read().rstrip().splitlines()]
  blank = [k + 1 for k, line in enumerate(lines) if not line]
  if blank:
    raise ValueError(f"labels file {path!r}: {_listing(blank, 'lines are blank')}")
  try:
    return np.asarray([int(s) for s in lines], np.int64)
  except ValueError:
    return np.asarray(lines, dtype=str)


def _np_load(path: str):
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:  # object arrays
    raise ValueError(f"cannot read {path!r} without pickle ({e}); store numeric or "
                     "string arrays") from e


def _as_strings(a: np.ndarray) -> list[str]:
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in a.tolist()]


def _index_labels(labels: np.ndarray, class_names: list[str] | None,
                  ) -> tuple[np.ndarray, list[str]]:
  """Labels (ints or strings) -> (``[n]`` int64 indices, class_names)."""
  if labels.dtype.kind in "fc":
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels.real)):
      raise ValueError(f"labels are {labels.dtype} with non-integer values; expected ints "
                       "or strings")
    labels = labels.real.astype(np.int64)
  if labels.dtype.kind in "iub":
    labels = labels.astype(np.int64)
    if class_names is not None:
      out = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
      if out.size:
        raise ValueError(
            f"int labels must index class_names (0..{len(class_names) - 1}); "
            f"{_listing(out.tolist(), 'rows are out of range')}, e.g. {labels[out[0]]}")
      return labels, class_names
    values = np.unique(labels)
    return np.searchsorted(values, labels).astype(np.int64), [str(v) for v in values]
  if labels.dtype.kind not in "US":
    raise ValueError(f"labels must be ints or strings, got dtype {labels.dtype}")
  names = _as_strings(labels)
  if class_names is None:
    class_names = sorted(set(names))
  index = {name: k for k, name in enumerate(class_names)}
  unknown = sorted(set(names) - set(index))
  if unknown:
    raise ValueError(f"{_listing(unknown, 'labels are not in class_names')}; class_names: "
                     f"{class_names}")
  return np.asarray([index[s] for s in names], np.int64), class_names


def load_embeddings(path: str, *, labels_path: str = "") -> UserEmbeddings:
  """Reads precomputed features and their labels.

  * ``.npz``: ``features`` (or ``embeddings``) ``[n, d]``, ``labels`` ``[n]`` (ints or
    strings; or from ``labels_path``), optional ``ids`` ``[n]`` and ``class_names``
    (then int labels index into it, string labels must be among them).
  * ``.npy``: the ``[n, d]`` features; labels from ``labels_path`` (``.npy``, or a text
    file with one label per line), by default the sibling ``<stem>_labels.npy``, else
    ``labels.npy``.

  Without ``class_names``, labels (strings or ints) map to their sorted distinct values,
  and ``class_names`` are those values as strings (int labels ``0..k-1`` stay as they are).

  Returns:
    :class:`UserEmbeddings`.

  Raises:
    ValueError: missing keys/files, features not ``[n, d]``, features and labels (or ids)
      of different lengths (both shapes given), labels out of range or not in
      ``class_names``, NaN/Inf rows (indices given), duplicate ids, < 2 classes.
  """
  kind = source_kind(path)
  if kind not in ("npz", "npy") or not os.path.isfile(path):
    raise ValueError(f"{path!r} is not an existing .npz or .npy file")
  ids = class_names = labels = None
  if kind == "npz":
    with _np_load(path) as data:
      keys = list(data.keys())
      key = "features" if "features" in keys else "embeddings"
      if key not in keys:
        raise ValueError(f"{path!r} has no 'features' (or 'embeddings') key; keys: {keys}")
      features = data[key]
      if "labels" in keys and not labels_path:
        labels = data["labels"]
      ids = data["ids"] if "ids" in keys else None
      class_names = _as_strings(data["class_names"]) if "class_names" in keys else None
    if labels is None and not labels_path:
      raise ValueError(f"{path!r} has no 'labels' key (keys: {keys}); pass labels_path")
  else:
    features = _np_load(path)
    if not labels_path:
      folder, stem = os.path.split(os.path.splitext(path)[0])
      tried = [os.path.join(folder, f"{stem}_labels.npy"), os.path.join(folder, "labels.npy")]
      labels_path = next((p for p in tried if os.path.isfile(p)), "")
      if not labels_path:
        raise ValueError(f"no labels for {path!r}: pass labels_path, or put them in one of "
                         f"{tried}")
  if labels is None:
    labels = _read_labels_file(labels_path)
  if features.ndim != 2 or features.dtype.kind not in "fiub":
    raise ValueError(f"features must be a numeric [n, d] array, got {features.dtype} "
                     f"{features.shape}")
  if features.dtype not in (np.float32, np.float64):
    features = features.astype(np.float32)
  labels = np.asarray(labels)
  if labels.ndim != 1 or len(labels) != len(features):
    raise ValueError(f"features {features.shape} and labels {labels.shape} do not match: "
                     "expected labels of shape [n] for features [n, d]")
  bad = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
  if bad.size:
    raise ValueError(f"{path!r}: features must be finite; "
                     f"{_listing(bad.tolist(), 'rows hold NaN or Inf')}")
  labels, class_names = _index_labels(labels, class_names)
  if ids is not None and ids.shape != (len(features),):
    raise ValueError(f"ids {ids.shape} do not match features {features.shape}")
  ids = [str(i) for i in range(len(features))] if ids is None else _as_strings(ids)
  _check_unique(ids, path)
  counts = np.bincount(labels, minlength=len(class_names))
  if np.count_nonzero(counts) < 2:
    raise ValueError(f"{path!r} has {np.count_nonzero(counts)} class with samples; at "
                     "least 2 classes are needed")
  warnings = [f"class {name!r} has no sample" for name, c in zip(class_names, counts)
              if c == 0]
  warnings += [_one_sample_warning(name, "sample")
               for name, c in zip(class_names, counts) if c == 1]
  return UserEmbeddings(features, labels, class_names, ids, warnings)
