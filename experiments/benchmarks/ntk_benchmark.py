"""Kernel-build benchmark: throughput and peak memory of each NTK implementation.

Compares diva_jax.empirical_ntk_fn ('structured', 'jacobian_contraction',
'ntk_vector_products') with the plain baseline people write by hand (``jax.jacrev`` of the
batch output, flattened, ``J1 @ J2.T``) on the same MLP (3 dense layers of 256, tanh, 32-d
inputs, 10 logits; the network of neural-tangents' published timing) written three ways (flax
linen, a plain JAX function over a list of dicts, flax nnx), and a small two-conv-layer CNN
(linen), traced NTK, float64, x2 = x1. Each 'structured' row also records how many
parameter leaves were structured / explicit / fallback (``diva_jax.ntk.api.ntk_plan``).

Optionally (``effnet_sizes``) the pretrained EfficientNet-Lite0 backbone at 96 px, float32,
traced over its 1280 pooled features, linearised over the parameters matching
``effnet_params`` (default: the head, last 1x1 conv + BN; ``'^params/(head_(conv|bn)|block_15)/'``
adds the last MBConv block, ``'^params/'`` is the whole network), 'structured' only, x2 = None.

Throughput is n^2 / seconds (best of `repeats` runs after compilation). Peak memory is
XLA's compiled-memory analysis of the jitted kernel (arguments + outputs + temporaries),
which on CPU is the buffer peak of the program. float64 runs under `jax.enable_x64(True)`:
the global flag is left as it was.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp

from diva_jax import io_utils
from diva_jax.ntk import api as ntk
from diva_jax import models
from diva_jax._tree_utils import parameter_paths
from diva_jax._tree_utils import path_matches
from experiments.lib import records_run


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = nn.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


def plain_mlp(params, x):
  """The MLP as a plain JAX function of ``[{'w', 'b'}] * 4``."""
  for p in params[:-1]:
    x = jnp.tanh(x @ p["w"] + p["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def plain_mlp_init(key, x):
  sizes = (x.shape[-1], 256, 256, 256, 10)
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b), x.dtype) / jnp.sqrt(a), "b": jnp.zeros(b, x.dtype)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


class NnxMLP(nnx.Module):

  def __init__(self, d_in, rngs):
    sizes = (d_in, 256, 256, 256, 10)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jnp.tanh(layer(x))
    return self.layers[-1](x)


def _models():
  """name -> (apply_fn, init(key, x) -> params, per-sample input shape)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: NnxMLP(32, nnx.Rngs(0))))

  def nnx_init(key, x):
    return nnx.split(NnxMLP(x.shape[-1], nnx.Rngs(key)))[1]

  return {
      "mlp": (MLP().apply, jax.jit(MLP().init), (32,)),
      "mlp_plain": (plain_mlp, plain_mlp_init, (32,)),
      "mlp_nnx": (lambda s, x: nnx.merge(graphdef, s)(x), nnx_init, (32,)),
      "cnn": (CNN().apply, jax.jit(CNN().init), (8, 8, 3)),
  }


def _plan_counts(apply_fn, params, x, block_size):
  counts = {}
  for leaf in ntk.ntk_plan(apply_fn, params, x, block_size=block_size):
    counts[leaf.kind] = counts.get(leaf.kind, 0) + 1
  return counts


def jacrev_baseline(apply_fn):
  """Plain jacrev of the batch output, flattened, J1 J2^T / c (traced)."""
  def kernel_fn(x1, x2, params):
    def jac(x):
      j = jax.jacrev(lambda p: apply_fn(p, x))(params)
      leaves = jax.tree_util.tree_leaves(j)
      n, c = leaves[0].shape[:2]
      return jnp.concatenate([l.reshape(n, c, -1) for l in leaves], -1)
    j1, j2 = jac(x1), jac(x2)
    c = j1.shape[1]
    return jnp.einsum("ikp,jkp->ij", j1, j2) / c
  return kernel_fn


def measure(kernel_fn, x, params, repeats):
  """(seconds = best of `repeats` after compilation, compile time, n^2/s, peak bytes), K."""
  fn = jax.jit(lambda x, p: kernel_fn(x, x, p))
  t0 = time.perf_counter()
  compiled = fn.lower(x, params).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
  k = compiled(x, params)
  k.block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    compiled(x, params).block_until_ready()
    times.append(time.perf_counter() - t0)
  best = min(times)
  n = x.shape[0]
  return dict(seconds=best, times_s=times, compile_seconds=compile_s,
              samples2_per_second=n * n / best, peak_bytes=peak), k


def _effnet_rows(sizes, params_regex, repeats, block_size):
  """EfficientNet-Lite0 (pretrained, 96 px, float32) kernel rows, traced over 1280 features."""
  backbone = models.efficientnet_lite0(pretrained=True, input_size=96)
  trainable = path_matches(params_regex)
  leaves = jax.tree_util.tree_leaves(backbone.params)
  n_params = sum(l.size for p, l in zip(parameter_paths(backbone.params), leaves)
                 if trainable(p))
  rows = []
  for n in sizes:
    x = jax.random.normal(jax.random.key(0), (n, 96, 96, 3), jnp.float32)
    bs = block_size if n > block_size else None
    kf = ntk.empirical_ntk_fn(backbone.apply_fn, trace_axes=(-1,), trainable=trainable,
                              block_size=bs)
    res, _ = measure(lambda x1, x2, p: kf(x1, None, p), x, backbone.params, repeats)
    res.update(model="efficientnet_lite0_96px", n=n, implementation="structured",
               block_size=bs, n_params=n_params, params=params_regex, float="float32",
               trace_axes=[-1], leaves=_plan_counts_kw(backbone.apply_fn, backbone.params, x,
                                                        bs, trainable))
    rows.append(res)
    print(f"effnet    n={n:5d} structured {res['seconds']:9.4f} s "
          f"{res['samples2_per_second']:12.4g} n^2/s peak "
          f"{res['peak_bytes'] / 2**20 if res['peak_bytes'] else -1:9.1f} MiB "
          f"(compile {res['compile_seconds']:.1f} s) {res['leaves']}", flush=True)
  return rows


def _plan_counts_kw(apply_fn, params, x, block_size, trainable):
  counts = {}
  for leaf in ntk.ntk_plan(apply_fn, params, x, block_size=block_size, trainable=trainable):
    counts[leaf.kind] = counts.get(leaf.kind, 0) + 1
  return counts


def _rows(sizes, repeats, max_baseline_n, block_size, skip):
  rows = []
  for name, (apply_fn, init, shape) in _models().items():
    for n in sizes.get(name, ()):
      x = jax.random.normal(jax.random.key(0), (n,) + shape, jnp.float64)
      params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                      init(jax.random.key(1), x[:1]))
      n_params = sum(l.size for l in jax.tree_util.tree_leaves(params))
      bs = block_size if n > block_size else None
      cases = {"jacrev_baseline": jacrev_baseline(apply_fn)}
      for impl in ntk.IMPLEMENTATIONS:
        cases[impl] = ntk.empirical_ntk_fn(apply_fn, implementation=impl, block_size=bs)
      reference = None
      for impl, kernel_fn in cases.items():
        if (n > max_baseline_n and impl != "structured") or f"{name}:{impl}" in skip:
          continue
        res, k = measure(kernel_fn, x, params, repeats)
        if reference is None:
          reference = k
        res.update(model=name, n=n, implementation=impl, block_size=bs, n_params=n_params,
                   max_abs_diff_vs_first=float(jnp.abs(k - reference).max()))
        if impl == "structured":
          res["leaves"] = _plan_counts(apply_fn, params, x, bs)
        rows.append(res)
        print(f"{name:9s} n={n:5d} {impl:22s} {res['seconds']:9.4f} s "
              f"{res['samples2_per_second']:12.4g} n^2/s "
              f"peak {res['peak_bytes'] / 2**20 if res['peak_bytes'] else -1:9.1f} MiB "
              f"(compile {res['compile_seconds']:.1f} s, "
              f"diff {res['max_abs_diff_vs_first']:.1e}) {res.get('leaves', '')}", flush=True)
  return rows


@records_run
def run(workdir: str, *, mlp_sizes: Sequence[int] = (64, 256, 1024),
        cnn_sizes: Sequence[int] = (32, 128, 256),
        plain_mlp_sizes: Sequence[int] = (256,), nnx_mlp_sizes: Sequence[int] = (256,),
        repeats: int = 3, max_baseline_n: int = 256, block_size: int = 256,
        skip: Sequence[str] = (), effnet_sizes: Sequence[int] = (),
        effnet_params: str = r"^params/head_(conv|bn)/", effnet_block_size: int = 32) -> list:
  """Runs every case; returns the result rows (also <workdir>/ntk_benchmark.json).

  ``mlp_sizes`` (linen), ``plain_mlp_sizes``, ``nnx_mlp_sizes`` and ``cnn_sizes`` are the
  sample counts n per model. ``skip``: ``'model:implementation'`` cases not to run (e.g.
  ``'cnn:ntk_vector_products'``, over 18 GB at n = 256). ``effnet_sizes``: n for the
  pretrained EfficientNet-Lite0 (float32, traced over its 1280 features, the parameters
  matching ``effnet_params``, blocks of ``effnet_block_size`` above it); none by default
  (about 170 MB of cotangents per sample in a block for the head).
  """
  sizes = {"mlp": mlp_sizes, "mlp_plain": plain_mlp_sizes, "mlp_nnx": nnx_mlp_sizes,
           "cnn": cnn_sizes}
  with jax.enable_x64(True):
    rows = _rows(sizes, repeats, max_baseline_n, block_size, set(skip))
  if effnet_sizes:
    rows += _effnet_rows(effnet_sizes, effnet_params, repeats, effnet_block_size)
  os.makedirs(workdir, exist_ok=True)
  out = dict(jax_version=jax.__version__, backend=jax.default_backend(),
             devices=str(jax.devices()[0]), float="float64", rows=rows)
  io_utils.atomic_write_json(os.path.join(workdir, "ntk_benchmark.json"), out, indent=1,
                             sort_keys=False)
  return rows
