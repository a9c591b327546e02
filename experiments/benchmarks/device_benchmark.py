"""Accelerator benchmark: the device's matrix rate, then images/s and the derivative's time
against it (for a GPU or TPU; runs on CPU too, where it is tested with small sizes).

* matmul: float32 ``[m, m] @ [m, m]`` (precision HIGHEST) and bfloat16, best of `repeats`
  after a warm-up: TFLOP/s of this device;
* features: EfficientNet-Lite0 at `image_size` px over `images` MNIST images (batch
  `batch_size`, all local devices, data parallel): images/s after compilation;
* derivative: ``loo_loss_and_derivative(backend="xla")`` jitted on float32 features
  ``[n, d]`` with ``c`` classes, median of `repeats`; its cost ~ 4 n d^2 flops (two Gram-type
  products and two quadratic-form passes), so ``4 n d^2 / t / matmul rate`` is the fraction
  of the device's matrix rate it reaches.

Writes ``{workdir}/device_benchmark.json`` atomically.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax import io_utils
from diva_jax import data
from diva_jax import models
from diva_jax.features import extract as features
import diva_jax
from experiments.lib import records_run


def _best(fn, repeats):
  fn()  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def matmul_rate(m: int, dtype, repeats: int) -> dict:
  key = jax.random.PRNGKey(0)
  a = jax.random.normal(key, (m, m), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (m, m), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  t = min(_best(lambda: f(a, b), repeats))
  return {"m": m, "dtype": jnp.dtype(dtype).name, "seconds": t, "tflops": 2 * m ** 3 / t / 1e12}


def feature_rate(images: int, image_size: int, batch_size: int) -> dict:
  imgs = data.load("mnist5k", "train").images
  imgs = np.concatenate([imgs] * (-(-images // len(imgs))))[:images]
  backbone = models.efficientnet_lite0(pretrained=True, input_size=image_size)
  devs = jax.local_devices()
  features.extract_features(backbone, imgs[:batch_size], batch_size=batch_size, devices=devs)
  start = time.perf_counter()
  features.extract_features(backbone, imgs, batch_size=batch_size, devices=devs)
  t = time.perf_counter() - start
  return {"images": images, "image_size": image_size, "batch_size": batch_size,
          "devices": len(devs), "seconds": t, "images_per_s": images / t}


def derivative_time(n: int, d: int, c: int, repeats: int, rate_tflops: float) -> dict:
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d))
  y = jnp.asarray(np.eye(c, dtype=np.float32)[rng.integers(0, c, n)])
  w = jnp.ones(n, jnp.float32)
  f = jax.jit(lambda w, y, z: diva_jax.loo_loss_and_derivative(
      w, y, features=z, reg=1.0, backend="xla"))
  times = _best(lambda: f(w, y, z), repeats)
  t = float(np.median(times))
  flops = 4.0 * n * d * d
  return {"n": n, "d": d, "c": c, "seconds": t, "gflop": flops / 1e9,
          "fraction_of_matmul_rate": flops / t / (rate_tflops * 1e12)}


@records_run
def run(workdir: str, *, matmul_m: int = 8192, images: int = 20000, image_size: int = 96,
        batch_size: int = 512, sizes: Sequence[int] = (20000, 100000), d: int = 1280,
        c: int = 10, repeats: int = 5) -> dict:
  """All three measurements on the default backend; returns and writes the results."""
  os.makedirs(workdir, exist_ok=True)
  dev = jax.devices()[0]
  out = {"date": time.strftime("%Y-%m-%d"), "backend": jax.default_backend(),
         "device": getattr(dev, "device_kind", str(dev)), "devices": jax.device_count()}
  path = os.path.join(workdir, "device_benchmark.json")
  out["matmul"] = [matmul_rate(matmul_m, jnp.float32, repeats),
                   matmul_rate(matmul_m, jnp.bfloat16, repeats)]
  io_utils.atomic_write_json(path, out)
  out["features"] = feature_rate(images, image_size, batch_size)
  io_utils.atomic_write_json(path, out)
  f32 = out["matmul"][0]["tflops"]
  out["derivative"] = [derivative_time(n, d, c, repeats, f32) for n in sizes]
  io_utils.atomic_write_json(path, out)
  return out
