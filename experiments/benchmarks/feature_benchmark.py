"""EfficientNet-Lite0 feature extraction: throughput and linear separability.

Measures
* throughput (images/s, after compilation) at each of `throughput_sizes`;
* the test accuracy of a ridge classification head (scikit-learn ``RidgeClassifierCV``,
  regularisation chosen by efficient LOO over `alphas`) on the backbone's features at
  `feature_size` vs on raw pixels, for each of `datasets`.

Features are cached under ``{workdir}/feature_cache``; results go to
``{workdir}/feature_benchmark.json``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Optional, Sequence

import jax
import numpy as np

from diva_jax import data
from diva_jax.features import extract as features
from diva_jax import io_utils
from diva_jax import models
from experiments.lib import records_run


def throughput(backbone: models.Backbone, images: np.ndarray, batch_size: int) -> dict:
  """Images/s of ``extract_features`` after a compile-and-warm-up call."""
  start = time.perf_counter()
  features.extract_features(backbone, images[:batch_size], batch_size=batch_size)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  features.extract_features(backbone, images, batch_size=batch_size)
  seconds = time.perf_counter() - start
  return {"input_size": list(backbone.input_size), "batch_size": batch_size,
          "images": int(len(images)), "seconds": seconds,
          "images_per_s": len(images) / seconds, "first_batch_with_compile_s": compile_s}


def ridge_accuracy(train_x, train_y, test_x, test_y, alphas: Sequence[float]) -> dict:
  """Test accuracy of a standardised ridge one-vs-all head, alpha by LOO on train."""
  from sklearn.linear_model import RidgeClassifierCV
  from sklearn.preprocessing import StandardScaler
  scaler = StandardScaler().fit(train_x)
  head = RidgeClassifierCV(alphas=alphas).fit(scaler.transform(train_x), train_y)
  return {"test_accuracy": float(head.score(scaler.transform(test_x), test_y)),
          "alpha": float(head.alpha_), "dim": int(train_x.shape[1])}


@records_run
def run(workdir: str, *, datasets: Sequence[str] = ("mnist5k", "digits"),
        feature_size: int = 96, throughput_sizes: Sequence[int] = (96, 224),
        throughput_images: int = 256, batch_size: int = 64, data_dir: Optional[str] = None,
        throughput_dataset: str = "mnist5k", max_images: Optional[int] = None,
        backbone: Optional[models.Backbone] = None) -> dict:
  """Runs the benchmark and writes ``{workdir}/feature_benchmark.json`` atomically.

  `max_images` keeps the first images of each split (None: all); `backbone` defaults to
  the pretrained EfficientNet-Lite0 (tests pass a small random one).
  """
  alphas = np.logspace(-2, 5, 15)
  backbone = models.efficientnet_lite0() if backbone is None else backbone
  results = {"backbone": backbone.name, "weights_id": backbone.weights_id,
             "platform": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                          "jax": jax.__version__, "devices": str(jax.devices())},
             "throughput": [], "separability": {}}
  sample = data.load(throughput_dataset, "train", data_dir=data_dir).images[:throughput_images]
  for size in throughput_sizes:
    bs = min(batch_size, 32) if size > 128 else batch_size
    results["throughput"].append(throughput(backbone.with_input_size(size), sample, bs))
    print(f"throughput {size}px: {results['throughput'][-1]['images_per_s']:.1f} images/s")

  sized = backbone.with_input_size(feature_size)
  for name in datasets:
    splits = {}
    for s in ("train", "test"):
      split = data.load(name, s, data_dir=data_dir)
      if max_images is not None:
        split = split._replace(images=split.images[:max_images],
                               labels=split.labels[:max_images])
      splits[s] = split
    feats = {}
    for s, split in splits.items():
      start = time.perf_counter()
      key = name if max_images is None else f"{name}-first{max_images}"
      entry = features.cached_features(sized, split.images, dataset=key, split=s,
                                       cache_dir=os.path.join(workdir, "feature_cache"),
                                       batch_size=batch_size)
      feats[s] = entry.features
      print(f"{name}/{s}: {len(entry.features)} features "
            f"({'cached' if entry.reused else 'computed'}, {time.perf_counter() - start:.1f} s)")
    pixels = {s: split.images.reshape(len(split.images), -1).astype(np.float64) / 255.0
              for s, split in splits.items()}
    results["separability"][name] = {
        "n_train": len(splits["train"].labels), "n_test": len(splits["test"].labels),
        "image_shape": list(splits["train"].images.shape[1:]),
        "feature_input_size": feature_size,
        "efficientnet_features": ridge_accuracy(feats["train"], splits["train"].labels,
                                                feats["test"], splits["test"].labels, alphas),
        "raw_pixels": ridge_accuracy(pixels["train"], splits["train"].labels,
                                     pixels["test"], splits["test"].labels, alphas),
    }
    r = results["separability"][name]
    print(f"{name}: ridge test accuracy features {r['efficientnet_features']['test_accuracy']:.4f}"
          f" vs pixels {r['raw_pixels']['test_accuracy']:.4f}")
  io_utils.atomic_write_json(os.path.join(workdir, "feature_benchmark.json"), results)
  return results
