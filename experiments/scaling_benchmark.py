r"""Scale-out benchmark: 1 process x all cores vs P processes x 1 core (loopback, gloo).

  python -m experiments.scaling_benchmark --workdir=/tmp/diva/scaling

Feature extraction of the main job's images (MNIST-5k train, EfficientNet-Lite0 at 96 px)
and the whole `:runlocal` outlier rejection, each as fresh processes; writes
scaling_benchmark.json (see experiments/benchmarks/scaling_benchmark.py).
"""

import json

from absl import app
from absl import flags

from diva_jax.app import cli
from experiments.benchmarks import scaling_benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DATASET = flags.DEFINE_string("dataset", "mnist5k", "Dataset whose images are embedded.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Keep the first images (0 = all).")
_PROCESSES = flags.DEFINE_integer("processes", 2, "Processes of the multi-process contender.")
_CORES = flags.DEFINE_list("cores", ["0", "1"], "CPU cores to use (taskset).")
_RUN_CONFIG = flags.DEFINE_string("run_config", "configs/outlier_rejection.py:runlocal",
                                  "Config of the whole-run measurement.")


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = scaling_benchmark.run(_WORKDIR.value, dataset=_DATASET.value,
                              max_images=_MAX_IMAGES.value, processes=_PROCESSES.value,
                              cores=[int(c) for c in _CORES.value],
                              run_config=_RUN_CONFIG.value)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
