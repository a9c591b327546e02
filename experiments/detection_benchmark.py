r"""Mislabel detection across kinds of data: tables and image embeddings, the default rule
against the paper's derivative, loo_removal_effect and cleanlab (configs/detection_benchmark.py).

  python -m experiments.detection_benchmark --workdir=/tmp/diva/detection
  python -m experiments.detection_benchmark \
      --config=configs/detection_benchmark.py:runlocal --workdir=/tmp/diva/detection_local
"""

from configs import detection_benchmark as default_config
from diva_jax.app import cli
from experiments.benchmarks import detection_benchmark

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, detection_benchmark.run)
