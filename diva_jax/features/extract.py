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
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from diva_jax import io_utils
from diva_jax.models.backbone import Backbone
from diva_jax.models.backbone import check_images
from diva_jax.models.backbone import forward
from diva_jax.parallel import multihost as dist
from diva_jax.parallel import sharding
from jax.sharding import NamedSharding, PartitionSpec

CACHE_FORMAT = 1
ProgressFn = Callable[[int, int], None]


__all__ = ["FeatureCacheError", "extract_features", "feature_cache_key", "feature_cache_path",
           "write_feature_cache", "read_feature_cache", "ShardedFeatures", "sharded_features",
           "CachedFeatures", "cached_features"]

class FeatureCacheError(ValueError):
  """A feature cache file is unreadable, corrupt, or was built for another configuration."""


def extract_features(backbone: Backbone, images: np.ndarray, *, batch_size: int = 64,
                     progress: ProgressFn | None = None,
                     devices: Sequence[Any] | None = None) -> np.ndarray:
  """Runs ``backbone`` over uint8 images in fixed-size jitted batches.

  Each batch is preprocessed on device (greyscale -> RGB, resize to
  ``backbone.input_size``, scaling) and fed to ``backbone.apply_fn``. The last batch is
  padded to ``batch_size`` so only one shape is ever compiled.

  Args:
    backbone: the feature map.
    images: ``[n, h, w]`` or ``[n, h, w, 1 | 3]`` uint8.
    batch_size: images per jitted call.
    progress: called as ``progress(done, total)`` after each batch.
    devices: split each batch over these devices (data parallel, ``NamedSharding``; the
      batch size is rounded up to a multiple of their number). Default: the default device.
      They must belong to this process (``diva_jax.parallel.multihost.sharded_features`` spreads
      the rows of a dataset over the devices of every process).

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
  params, put = backbone.params, (lambda x: x)
  if devices is not None and len(devices) > 1:
    mesh = sharding.data_mesh(devices)
    batch_size = -(-batch_size // len(devices)) * len(devices)
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    put = lambda x: jax.device_put(x, rows)
  elif devices is not None and len(devices) == 1:
    params = jax.device_put(params, devices[0])
    put = lambda x: jax.device_put(x, devices[0])
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    count = batch.shape[0]
    if count < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]),
                                              batch.dtype)])
    feats = forward(backbone.apply_fn, backbone.preprocess, tuple(backbone.input_size),
                    params, put(batch))
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


# ----------------------------------------------------------------------------------------
# Data-parallel feature extraction: each process embeds its rows, then all are gathered.


class ShardedFeatures(NamedTuple):
  """Result of :func:`sharded_features`.

  Attributes:
    features: ``[n, d]`` float32, the same on every process.
    rows_embedded: how many rows this process ran through the backbone.
    rows_embedded_per_process: ``[P]``, every process's count.
  """
  features: np.ndarray
  rows_embedded: int
  rows_embedded_per_process: list


def sharded_features(backbone, images: np.ndarray, *, batch_size: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> ShardedFeatures:
  """Backbone features of ``images``, each process embedding only its :func:`diva_jax.parallel.multihost.row_range`.

  Every process passes the same ``images`` (or at least the same shape: only its own rows
  are read). Within a process each batch is split over the local devices (the batch size is
  rounded up to a multiple of their number); the uneven last batch is padded. The rows are
  then gathered so every process returns all ``n`` rows.

  Args:
    backbone: a ``diva_jax.models.Backbone``.
    images: ``[n, h, w(, c)]`` uint8.
    batch_size: images per jitted call on this process.
    progress: ``progress(done, total)`` over this process's rows.

  Returns:
    :class:`ShardedFeatures`.
  """
  check_images(images)
  n = int(np.shape(images)[0])
  start, stop = dist.row_range(n)
  local_devices = jax.local_devices()
  mine = extract_features(backbone, np.asarray(images[start:stop]),
                                batch_size=batch_size, progress=progress,
                                devices=local_devices)
  counts = dist.allgather_ints([stop - start])[:, 0]
  return ShardedFeatures(dist.gather_rows(mine, n), stop - start, [int(c) for c in counts])



class CachedFeatures(NamedTuple):
  """Result of :func:`cached_features`.

  Attributes:
    features: ``[n, d]`` float32.
    path: the cache file.
    reused: True if read from a valid cache; False if (re)computed and written.
    reason: why the cache was not reused (``""`` if it was): ``"missing"`` or the
      validation error.
    rows_embedded_per_process: how many images each process ran through the backbone
      (zeros on a cache hit).
  """
  features: np.ndarray
  path: str
  reused: bool
  reason: str
  rows_embedded_per_process: tuple = (0,)


def _try_read(path, key):
  try:
    return read_feature_cache(path, key), ""
  except FileNotFoundError:
    return None, "missing"
  except FeatureCacheError as e:
    return None, str(e)


def cached_features(backbone: Backbone, images: np.ndarray, *, dataset: str, split: str,
                    cache_dir: str | os.PathLike, batch_size: int = 64,
                    progress: ProgressFn | None = None) -> CachedFeatures:
  """Features from the on-disk cache when valid, else extracted and cached atomically.

  Multi-process (``jax.distributed``; every process calls it with the same arguments): a
  valid cache is read where each process sees it, else sent from process 0; otherwise
  each process embeds only its share of the rows on its local devices
  (``diva_jax.parallel.multihost.sharded_features``), the rows are gathered, process 0 writes the
  cache and every other process writes its own copy only if it does not see that file
  (hosts without a shared filesystem). The file does not depend on the number of
  processes: a 1-process run reuses what a 2-process run cached, and the reverse.

  Args:
    backbone: the feature map.
    images: ``[n, h, w(, c)]`` uint8 images of ``dataset``/``split``.
    dataset: dataset name (cache key and file name).
    split: split name (cache key and file name).
    cache_dir: directory of cache files (created if missing).
    batch_size: see :func:`extract_features` (per process).
    progress: see :func:`extract_features` (this process's rows; not called on a cache hit).

  Returns:
    :class:`CachedFeatures`.
  """
  check_images(images)
  key = feature_cache_key(backbone, images, dataset, split)
  path = feature_cache_path(cache_dir, backbone, dataset, split)
  features, reason = _try_read(path, key)
  count = dist.process_count()
  if count == 1 and features is not None:
    return CachedFeatures(features, path, True, "", (0,))
  if count > 1:
    seen = dist.allgather_ints([features is not None])[:, 0]
    if seen.all():
      return CachedFeatures(features, path, True, "", (0,) * count)
    if seen[0]:  # process 0 has it, some other process does not: send it
      data = dist.broadcast_bytes(dist.save_npz_bytes({"features": features})
                                  if dist.process_index() == 0 else None)
      return CachedFeatures(dist.load_npz_bytes(data)["features"], path, True, "",
                            (0,) * count)
    reason = dist.broadcast_bytes(reason.encode()).decode()
  res = sharded_features(backbone, images, batch_size=batch_size, progress=progress)
  if dist.process_index() == 0:
    write_feature_cache(path, res.features, key)
  if count > 1:
    dist.barrier(f"feature cache {os.path.basename(path)}")
    if dist.process_index() != 0 and not os.path.exists(path):
      write_feature_cache(path, res.features, key)
  return CachedFeatures(res.features, path, False, reason,
                        tuple(res.rows_embedded_per_process))
