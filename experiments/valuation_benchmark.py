r"""The dataset derivative against the data-valuation methods, on one protocol (the valuation
table in docs/).

  python -m experiments.valuation_benchmark --workdir=/tmp/diva/valuation
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.benchmarks import valuation_benchmark

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "valuation_benchmark.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, valuation_benchmark.run)
