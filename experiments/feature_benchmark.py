r"""EfficientNet-Lite0 feature extraction: throughput and linear separability.

Measures
* throughput (images/s, after compilation) at each ``--throughput_sizes`` resolution;
* the test accuracy of a ridge classification head (scikit-learn ``RidgeClassifierCV``,
  regularisation chosen by efficient LOO over ``--alphas``) on EfficientNet-Lite0 features
  at ``--feature_size`` vs on raw pixels, for each of ``--datasets``.

Features are cached under ``{workdir}/feature_cache``; results go to
``{workdir}/feature_benchmark.json``.

Run (2 CPU cores: about 2 minutes)::

  python -m experiments.feature_benchmark --workdir=/tmp/feature_benchmark
"""
from __future__ import annotations

import os
import platform
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import numpy as np
from sklearn.linear_model import RidgeClassifierCV
from sklearn.preprocessing import StandardScaler

from diva_jax import data
from diva_jax import features
from diva_jax import io_utils
from diva_jax import models

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default TFDS's).")
_DATASETS = flags.DEFINE_list("datasets", ["mnist5k", "digits"], "Datasets to evaluate.")
_FEATURE_SIZE = flags.DEFINE_integer("feature_size", 96, "Backbone input size (px).")
_THROUGHPUT_SIZES = flags.DEFINE_list("throughput_sizes", ["96", "224"], "Sizes to time.")
_THROUGHPUT_IMAGES = flags.DEFINE_integer("throughput_images", 256, "Images timed per size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Extraction batch size.")


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
  scaler = StandardScaler().fit(train_x)
  head = RidgeClassifierCV(alphas=alphas).fit(scaler.transform(train_x), train_y)
  return {"test_accuracy": float(head.score(scaler.transform(test_x), test_y)),
          "alpha": float(head.alpha_), "dim": int(train_x.shape[1])}


def run(workdir: str, *, datasets: Sequence[str], feature_size: int,
        throughput_sizes: Sequence[int], throughput_images: int, batch_size: int,
        data_dir: str | None = None) -> dict:
  """Runs the benchmark and writes ``{workdir}/feature_benchmark.json`` atomically."""
  alphas = np.logspace(-2, 5, 15)
  backbone = models.efficientnet_lite0()
  results = {"backbone": backbone.name, "weights_id": backbone.weights_id,
             "platform": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                          "jax": jax.__version__, "devices": str(jax.devices())},
             "throughput": [], "separability": {}}
  sample = data.load("mnist5k", "train", data_dir=data_dir).images[:throughput_images]
  for size in throughput_sizes:
    bs = min(batch_size, 32) if size > 128 else batch_size
    results["throughput"].append(throughput(backbone.with_input_size(size), sample, bs))
    print(f"throughput {size}px: {results['throughput'][-1]['images_per_s']:.1f} images/s")

  sized = backbone.with_input_size(feature_size)
  for name in datasets:
    splits = {s: data.load(name, s, data_dir=data_dir) for s in ("train", "test")}
    feats = {}
    for s, split in splits.items():
      start = time.perf_counter()
      entry = features.cached_features(sized, split.images, dataset=name, split=s,
                                       cache_dir=os.path.join(workdir, "feature_cache"),
                                       batch_size=batch_size)
      feats[s] = entry.features
      print(f"{name}/{s}: {len(entry.features)} features ({'cached' if entry.reused else 'computed'}"
            f", {time.perf_counter() - start:.1f} s)")
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


def main(argv):
  del argv
  run(_WORKDIR.value, datasets=_DATASETS.value, feature_size=_FEATURE_SIZE.value,
      throughput_sizes=[int(s) for s in _THROUGHPUT_SIZES.value],
      throughput_images=_THROUGHPUT_IMAGES.value, batch_size=_BATCH_SIZE.value,
      data_dir=_DATA_DIR.value)


if __name__ == "__main__":
  app.run(main)
