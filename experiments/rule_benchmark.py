r"""The default label-issue rule at scale: streamed against in memory, the Gram floor,
RidgeCV and cleanlab's 5-fold pipeline (configs/rule_benchmark.py).

  python -m experiments.rule_benchmark --workdir=/tmp/diva/rule_benchmark
  python -m experiments.rule_benchmark --config=configs/rule_benchmark.py:runlocal \
      --workdir=/tmp/diva/rule_benchmark_local
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.benchmarks import rule_benchmark

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "rule_benchmark.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, rule_benchmark.run)
