"""Batched feature extraction and the atomic, validated feature cache."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from diva_jax.features import extract as features
from diva_jax import io_utils
from diva_jax import models


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.tanh(nn.Dense(7)(x.reshape((x.shape[0], -1))))


def _tiny_backbone(seed=0):
  module = _TinyNet()
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 12, 12, 3), jnp.float32))
  return models.from_flax(module, variables, name="tiny", input_size=(12, 12))


@pytest.fixture
def images():
  x, _ = load_digits(return_X_y=True)
  return np.round(x[:37] * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)


def test_batched_equals_direct_with_progress(images):
  backbone = _tiny_backbone()
  calls = []
  feats = features.extract_features(backbone, images, batch_size=16,
                                    progress=lambda done, total: calls.append((done, total)))
  assert calls == [(16, 37), (32, 37), (37, 37)]
  assert feats.shape == (37, 7) and feats.dtype == np.float32
  np.testing.assert_allclose(feats, backbone.features(images), rtol=1e-6, atol=1e-6)


def test_efficientnet_features_on_greyscale_digits(images):
  backbone = models.efficientnet_lite0().with_input_size(64)
  feats = features.extract_features(backbone, images[:6], batch_size=4)
  assert feats.shape == (6, 1280) and np.isfinite(feats).all()
  rgb = np.repeat(images[:6, ..., None], 3, axis=-1)
  np.testing.assert_array_equal(features.extract_features(backbone, rgb, batch_size=4), feats)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 8, 8), np.float32), "uint8"),
    (np.zeros((4, 64), np.uint8), "got shape"),
    (np.zeros((4, 8, 8, 4), np.uint8), "got shape"),
])
def test_bad_images(bad, match):
  with pytest.raises(ValueError, match=match):
    features.extract_features(_tiny_backbone(), bad)


def _cached(backbone, images, tmp_path):
  return features.cached_features(backbone, images, dataset="digits", split="train",
                                  cache_dir=tmp_path, batch_size=16)


def test_cache_reused_when_valid(images, tmp_path):
  backbone = _tiny_backbone()
  first = _cached(backbone, images, tmp_path)
  assert not first.reused and first.reason == "missing"
  second = _cached(backbone, images, tmp_path)
  assert second.reused and second.path == first.path
  np.testing.assert_array_equal(second.features, first.features)
  assert os.listdir(tmp_path) == [os.path.basename(first.path)]  # No temp files left.


def test_cache_rebuilt_when_truncated(images, tmp_path):
  backbone = _tiny_backbone()
  first = _cached(backbone, images, tmp_path)
  with open(first.path, "rb") as f:
    raw = f.read()
  with open(first.path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  rebuilt = _cached(backbone, images, tmp_path)
  assert not rebuilt.reused and "unreadable" in rebuilt.reason
  np.testing.assert_array_equal(rebuilt.features, first.features)
  assert _cached(backbone, images, tmp_path).reused


def test_cache_rebuilt_when_tampered(images, tmp_path):
  backbone = _tiny_backbone()
  first = _cached(backbone, images, tmp_path)
  with np.load(first.path) as z:
    stored = dict(z)
  stored["features"] = stored["features"] + 1.0
  np.savez(first.path, **stored)
  rebuilt = _cached(backbone, images, tmp_path)
  assert not rebuilt.reused and "checksum" in rebuilt.reason
  np.testing.assert_array_equal(rebuilt.features, first.features)


def test_cache_rebuilt_when_stale(images, tmp_path):
  first = _cached(_tiny_backbone(seed=0), images, tmp_path)
  other_weights = _cached(_tiny_backbone(seed=1), images, tmp_path)
  assert other_weights.path == first.path
  assert not other_weights.reused and "weights_id" in other_weights.reason
  assert not np.allclose(other_weights.features, first.features)
  other_images = _cached(_tiny_backbone(seed=1), images[:-1], tmp_path)
  assert not other_images.reused and "images_sha256" in other_images.reason


def test_read_cache_from_other_configuration_raises(images, tmp_path):
  backbone = _tiny_backbone()
  entry = _cached(backbone, images, tmp_path)
  key = features.feature_cache_key(backbone, images, "digits", "test")
  with pytest.raises(features.FeatureCacheError,
                     match="split: expected 'test', stored 'train'"):
    features.read_feature_cache(entry.path, key)
  with pytest.raises(FileNotFoundError):
    features.read_feature_cache(tmp_path / "absent.npz")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
  path = tmp_path / "x.json"
  io_utils.atomic_write_json(path, {"a": 1})
  with pytest.raises(RuntimeError):
    with io_utils.atomic_open(path) as f:
      f.write(b"partial")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == '{\n  "a": 1\n}\n'
  assert os.listdir(tmp_path) == ["x.json"]
