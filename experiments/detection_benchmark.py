r"""Mislabel detection across kinds of data: tables and image embeddings, the default rule
against the paper's derivative, loo_removal_effect and cleanlab (configs/detection_benchmark.py).

  python -m experiments.detection_benchmark --workdir=/tmp/diva/detection
  python -m experiments.detection_benchmark \
      --config=configs/detection_benchmark.py:runlocal --workdir=/tmp/diva/detection_local
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.benchmarks import detection_benchmark

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "detection_benchmark.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, detection_benchmark.run)
