"""Backbone feature extraction, batched and jitted, with a validated on-disk cache.

A cache file is an ``.npz`` holding ``features [n, d]`` float32, the JSON ``key`` it was
computed for (backbone name, weights checksum, dataset, split, input size, preprocessing
function, image count/shape/checksum) and the SHA-256 of the features' bytes. It is written
atomically (temp file + ``os.replace``), so a crash never leaves a half-written cache, and
it is validated on read: an unreadable, truncated, tampered or stale file is rebuilt by
:func:`cached_features`, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import Any, Callable, NamedTuple

import numpy as np

from diva_jax import io_utils
from diva_jax.models.backbone import Backbone
from diva_jax.models.backbone import check_images
from diva_jax.models.backbone import forward

CACHE_FORMAT = 1
ProgressFn = Callable[[int, int], None]


class FeatureCacheError(ValueError):
  """A feature cache file is unreadable, corrupt, or was built for another configuration."""


def extract_features(backbone: Backbone, images: np.ndarray, *, batch_size: int = 64,
                     progress: ProgressFn | None = None) -> np.ndarray:
  """Runs ``backbone`` over uint8 images in fixed-size jitted batches.

  Each batch is preprocessed on device (greyscale -> RGB, resize to
  ``backbone.input_size``, scaling) and fed to ``backbone.apply_fn``. The last batch is
  padded to ``batch_size`` so only one shape is ever compiled.

  Args:
    backbone: the feature map.
    images: ``[n, h, w]`` or ``[n, h, w, 1 | 3]`` uint8.
    batch_size: images per jitted call.
    progress: called as ``progress(done, total)`` after each batch.

  Returns:
    ``[n, backbone.feature_dim]`` float32 NumPy features.

  Raises:
    ValueError: images of the wrong rank, channel count or dtype; bad batch size.
  """
  check_images(images)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  images = np.asarray(images)
  n = images.shape[0]
  out = np.empty((n, backbone.feature_dim), np.float32)
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    count = batch.shape[0]
    if count < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]),
                                              batch.dtype)])
    feats = forward(backbone.apply_fn, backbone.preprocess, tuple(backbone.input_size),
                         backbone.params, batch)
    out[start:start + count] = np.asarray(feats)[:count]
    if progress is not None:
      progress(start + count, n)
  return out


# ----------------------------------------------------------------------------------------
# Cache.


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def feature_cache_key(backbone: Backbone, images: np.ndarray, dataset: str,
                      split: str) -> dict[str, Any]:
  """Everything the features depend on, as a JSON-able dict."""
  preprocess = backbone.preprocess
  return {
      "format": CACHE_FORMAT,
      "backbone": backbone.name,
      "weights_id": backbone.weights_id,
      "dataset": dataset,
      "split": split,
      "input_size": list(backbone.input_size),
      "preprocess": f"{preprocess.__module__}.{preprocess.__qualname__}",
      "feature_dim": int(backbone.feature_dim),
      "images_shape": list(np.shape(images)),
      "images_sha256": _sha256(np.asarray(images)),
  }


def feature_cache_path(cache_dir: str | os.PathLike, backbone: Backbone, dataset: str,
                       split: str) -> str:
  """``{cache_dir}/{dataset}-{split}-{backbone}-{h}x{w}.npz`` (unsafe characters -> _).

  The name identifies *what* is cached; whether the file is current (weights, images,
  preprocessing) is checked against the stored key on read.
  """
  h, w = backbone.input_size
  stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{dataset}-{split}-{backbone.name}-{h}x{w}")
  return os.path.join(os.fspath(cache_dir), stem + ".npz")


def write_feature_cache(path: str | os.PathLike, features: np.ndarray,
                        key: dict[str, Any]) -> None:
  """Writes features, key and checksum atomically."""
  features = np.asarray(features, np.float32)
  io_utils.atomic_save_npz(path, {
      "features": features,
      "key": np.asarray(json.dumps(key, sort_keys=True)),
      "features_sha256": np.asarray(_sha256(features)),
  })


def read_feature_cache(path: str | os.PathLike,
                       expected_key: dict[str, Any] | None = None) -> np.ndarray:
  """Reads and validates a feature cache file.

  Args:
    path: an ``.npz`` written by :func:`write_feature_cache`.
    expected_key: if given, the stored key must equal it.

  Returns:
    ``[n, d]`` float32 features.

  Raises:
    FileNotFoundError: no file at ``path``.
    FeatureCacheError: unreadable/truncated file, checksum mismatch, or a key that differs
      from ``expected_key`` (the message names the differing fields, expected vs stored).
  """
  try:
    with np.load(path, allow_pickle=False) as z:
      features = z["features"]
      key = json.loads(str(z["key"]))
      checksum = str(z["features_sha256"])
  except FileNotFoundError:
    raise
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise FeatureCacheError(f"feature cache {os.fspath(path)!r} is unreadable "
                            f"({type(e).__name__}: {e})") from e
  if _sha256(features) != checksum:
    raise FeatureCacheError(f"feature cache {os.fspath(path)!r} fails its checksum")
  if features.dtype != np.float32 or features.ndim != 2:
    raise FeatureCacheError(f"feature cache {os.fspath(path)!r} holds {features.dtype} "
                            f"{features.shape}, not float32 [n, d]")
  if expected_key is not None and key != expected_key:
    fields = sorted(k for k in set(key) | set(expected_key)
                    if key.get(k) != expected_key.get(k))
    diff = "; ".join(f"{k}: expected {expected_key.get(k)!r}, stored {key.get(k)!r}"
                     for k in fields)
    raise FeatureCacheError(
        f"feature cache {os.fspath(path)!r} was built for another configuration: {diff}")
  if expected_key is not None and (
      features.shape != (expected_key["images_shape"][0], expected_key["feature_dim"])):
    raise FeatureCacheError(f"feature cache {os.fspath(path)!r} has shape "
                            f"{features.shape}, inconsistent with its key")
  return features


class CachedFeatures(NamedTuple):
  """Result of :func:`cached_features`.

  Attributes:
    features: ``[n, d]`` float32.
    path: the cache file.
    reused: True if read from a valid cache; False if (re)computed and written.
    reason: why the cache was not reused (``""`` if it was): ``"missing"`` or the
      validation error.
  """
  features: np.ndarray
  path: str
  reused: bool
  reason: str


def cached_features(backbone: Backbone, images: np.ndarray, *, dataset: str, split: str,
                    cache_dir: str | os.PathLike, batch_size: int = 64,
                    progress: ProgressFn | None = None) -> CachedFeatures:
  """Features from the on-disk cache when valid, else extracted and cached atomically.

  Args:
    backbone: the feature map.
    images: ``[n, h, w(, c)]`` uint8 images of ``dataset``/``split``.
    dataset: dataset name (cache key and file name).
    split: split name (cache key and file name).
    cache_dir: directory of cache files (created if missing).
    batch_size: see :func:`extract_features`.
    progress: see :func:`extract_features` (not called on a cache hit).

  Returns:
    :class:`CachedFeatures`.
  """
  check_images(images)
  key = feature_cache_key(backbone, images, dataset, split)
  path = feature_cache_path(cache_dir, backbone, dataset, split)
  try:
    return CachedFeatures(read_feature_cache(path, key), path, True, "")
  except FileNotFoundError:
    reason = "missing"
  except FeatureCacheError as e:
    reason = str(e)
  features = extract_features(backbone, images, batch_size=batch_size, progress=progress)
  write_feature_cache(path, features, key)
  return CachedFeatures(features, path, False, reason)
