r"""The dataset derivative against the data-valuation methods, on one protocol (the valuation
table in docs/).

  python -m experiments.valuation_benchmark --workdir=/tmp/diva/valuation
"""

from configs import valuation_benchmark as default_config
from diva_jax.app import cli
from experiments.benchmarks import valuation_benchmark

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, valuation_benchmark.run)
