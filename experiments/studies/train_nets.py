"""The networks and inputs of `train_with_diva`: an MLP head on embeddings, or a frozen
EfficientNet-Lite0 trunk with its last blocks and a head trained (`efficientnet_net`), their
parameters, the trunk's cached activations, the optimiser, batched application."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diva_jax import models
from diva_jax.models import efficientnet
from diva_jax.app import common
from diva_jax.app.errors import ConfigError


def parse_trunk(trunk) -> int | None:
  """'mlp' -> None; 'block:K' -> K (0 = the whole network)."""
  total = efficientnet.num_blocks()
  kind, _, k = str(trunk).partition(":")
  if kind == "mlp" and not k:
    return None
  if kind == "block" and k.isdigit() and 0 <= int(k) <= total:
    return int(k)
  raise ConfigError(f"trunk must be 'mlp' or 'block:K' with K in [0, {total}] (0: the whole "
                    f"network), got {trunk!r}.")


class Net(NamedTuple):
  init: Callable[[Any], Any]
  apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
  pretrained: Callable[[str], bool]   # top-level param name -> trained at the backbone rate


def init_head(key, d: int, hidden: int, c: int) -> dict:
  k1, k2 = jax.random.split(key)
  f32 = jnp.float32
  return {"w1": jax.random.normal(k1, (d, hidden), f32) * np.sqrt(2.0 / d),
          "b1": jnp.zeros(hidden, f32),
          "w2": jax.random.normal(k2, (hidden, c), f32) * np.sqrt(1.0 / hidden),
          "b2": jnp.zeros(c, f32)}


def hidden_features(params, x):
  """The MLP head's penultimate representation [n, hidden]."""
  return jax.nn.relu(x @ params["w1"] + params["b1"])


def logits(params, x):
  return hidden_features(params, x) @ params["w2"] + params["b2"]


def mlp_net(d: int, hidden: int, c: int) -> Net:
  return Net(lambda key: init_head(key, d, hidden, c),
             lambda p, x: (hidden_features(p, x), logits(p, x)),
             lambda name: False)


def efficientnet_net(block: int, c: int, image_size: int) -> Net:
  """EfficientNet-Lite0 from `block` on (pretrained), a new linear classifier on its pooled
  features. Block 0: from uint8 images (preprocessed inside)."""
  module = efficientnet.EfficientNetLite(start_block=block)
  variables = efficientnet.load_pretrained_variables()
  keep = lambda name: (name in ("head_conv", "head_bn")
                       or (name.startswith("block_") and int(name[6:]) >= block)
                       or (block == 0 and name.startswith("stem_")))
  net_params = {k: jax.tree.map(jnp.asarray, v)
                for k, v in variables["params"].items() if keep(k)}
  stats = {k: jax.tree.map(jnp.asarray, v) for k, v in variables["batch_stats"].items()
           if keep(k)}
  size = (image_size, image_size)

  def init(key):
    return {"net": net_params,
            "fc": {"w": jax.random.normal(key, (efficientnet.HEAD_FEATURES, c), jnp.float32)
                        * np.sqrt(1.0 / efficientnet.HEAD_FEATURES),
                   "b": jnp.zeros(c, jnp.float32)}}

  def apply(p, x):
    if block == 0:
      x = models.preprocess_images(x, size)
    pooled = module.apply({"params": p["net"], "batch_stats": stats}, x, features=True)
    return pooled, pooled @ p["fc"]["w"] + p["fc"]["b"]

  return Net(init, apply, lambda name: name == "net")


def _loss_from_logp(logp, y, loss: str, q: float):
  """Per-sample cross-entropy ('ce') or generalized cross-entropy ('gce', exponent q)."""
  if loss == "gce":  # (1 - p_y^q) / q
    return (1.0 - jnp.exp(q * jnp.take_along_axis(logp, y[:, None], 1)[:, 0])) / q
  return -jnp.take_along_axis(logp, y[:, None], 1)[:, 0]


def _lift(*blocks):
  """Features for the LOO head: each block standardised per column (blocks scaled to the
  same mean squared norm), concatenated, with a bias column."""
  out = []
  for x in blocks:
    x = np.asarray(x, np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    out.append(x / np.sqrt(x.shape[1]))
  n = len(out[0])
  return np.concatenate(out + [np.ones((n, 1))], 1).astype(np.float32)


class Inputs(NamedTuple):
  """What the trained part reads, per split: pooled features (mlp), cached activations
  (block:K) or uint8 images (block:0)."""
  train: np.ndarray
  test: np.ndarray


def trunk_inputs(config, train, test, cache_dir: str, workdir) -> Inputs:
  """The trained part's inputs for both splits (block:K: the frozen trunk's activations,
  cached like any backbone's features)."""
  block = parse_trunk(config.trunk)
  if block is None:
    return Inputs(train.features, test.features)
  if block == 0:
    return Inputs(train.images, test.images)
  trunk = models.efficientnet_lite0_trunk(block, input_size=int(config.image_size))
  shape = models.activation_shape(block, int(config.image_size))
  out = []
  for split, fs, max_n in (("train", train, config.max_train), ("test", test, config.max_test)):
    a = common.embed(config, trunk, fs.images, dataset=config.dataset,
                     split=f"{split}{max_n or ''}", cache_dir=cache_dir, workdir=workdir)
    out.append(a.reshape(len(a), *shape))
  return Inputs(*out)


def make_net(config, inputs: Inputs, num_classes: int) -> Net:
  block = parse_trunk(config.trunk)
  if block is None:
    return mlp_net(inputs.train.shape[1], int(config.hidden), num_classes)
  return efficientnet_net(block, num_classes, int(config.image_size))


def _optimizer(config, net: Net, params):
  labels = {k: ("backbone" if net.pretrained(k) else "new") for k in params}
  return optax.multi_transform(
      {"new": optax.adam(float(config.learning_rate)),
       "backbone": optax.adam(float(config.backbone_learning_rate))}, labels)


def _batched(fn, x, size: int = 256, multiple: int = 1):
  """fn over the rows of x in chunks (bounded memory for convolutional parts); each chunk
  padded to a multiple of `multiple` rows (split over that many devices), the padding cut."""
  outs = []
  for i in range(0, len(x), size):
    b = np.asarray(x[i:i + size])
    pad = -len(b) % multiple
    b = np.concatenate([b, np.repeat(b[-1:], pad, 0)]) if pad else b
    outs.append([np.asarray(o)[:len(b) - pad] for o in fn(b)])
  return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]
