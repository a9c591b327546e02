r"""EfficientNet-Lite0 feature extraction: throughput and linear separability
(experiments/benchmarks/feature_benchmark.py): images/s at each ``--throughput_sizes`` resolution, and
the test accuracy of a ridge head (``RidgeClassifierCV``, alpha by LOO) on the features at
``--feature_size`` vs on raw pixels, for each of ``--datasets``.

Features are cached under ``{workdir}/feature_cache``; results go to
``{workdir}/feature_benchmark.json``.

Run (2 CPU cores: about 2 minutes)::

  python -m experiments.feature_benchmark --workdir=/tmp/feature_benchmark
"""

from absl import app
from absl import flags

from diva_jax.app import cli
from experiments.benchmarks import feature_benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default TFDS's).")
_DATASETS = flags.DEFINE_list("datasets", ["mnist5k", "digits"], "Datasets to evaluate.")
_FEATURE_SIZE = flags.DEFINE_integer("feature_size", 96, "Backbone input size (px).")
_THROUGHPUT_SIZES = flags.DEFINE_list("throughput_sizes", ["96", "224"], "Sizes to time.")
_THROUGHPUT_IMAGES = flags.DEFINE_integer("throughput_images", 256, "Images timed per size.")
_THROUGHPUT_DATASET = flags.DEFINE_string("throughput_dataset", "mnist5k",
                                          "Dataset whose train images are timed.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Extraction batch size.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Keep the first images of each split.")


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  feature_benchmark.run(
      _WORKDIR.value, datasets=_DATASETS.value, feature_size=_FEATURE_SIZE.value,
      throughput_sizes=[int(s) for s in _THROUGHPUT_SIZES.value if s],
      throughput_images=_THROUGHPUT_IMAGES.value, batch_size=_BATCH_SIZE.value,
      data_dir=_DATA_DIR.value, throughput_dataset=_THROUGHPUT_DATASET.value,
      max_images=_MAX_IMAGES.value)


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
