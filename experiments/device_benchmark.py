r"""Accelerator benchmark (experiments/benchmarks/device_benchmark.py): matrix rate, images/s, and the
derivative's time against the matrix rate.

  python -m experiments.device_benchmark --workdir=/tmp/diva/device

experiments/gpu_benchmark.sh runs it with the main job and experiments.benchmark on a GPU.
"""

import json

from absl import app
from absl import flags

from diva_jax.app import cli
from experiments.benchmarks import device_benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_MATMUL_M = flags.DEFINE_integer("matmul_m", 8192, "Square matmul size.")
_IMAGES = flags.DEFINE_integer("images", 20000, "Images embedded (MNIST, repeated).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 96, "Backbone input size (px).")
_BATCH = flags.DEFINE_integer("batch_size", 512, "Images per jitted call.")
_SIZES = flags.DEFINE_list("sizes", ["20000", "100000"], "Rows n of the derivative runs.")
_D = flags.DEFINE_integer("d", 1280, "Feature dimension.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after a warm-up.")


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = device_benchmark.run(_WORKDIR.value, matmul_m=_MATMUL_M.value, images=_IMAGES.value,
                             image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
                             sizes=[int(s) for s in _SIZES.value if s], d=_D.value,
                             repeats=_REPEATS.value)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
