r"""The default label-issue rule at scale: streamed against in memory, the Gram floor,
RidgeCV and cleanlab's 5-fold pipeline (configs/rule_benchmark.py).

  python -m experiments.rule_benchmark --workdir=/tmp/diva/rule_benchmark
  python -m experiments.rule_benchmark --config=configs/rule_benchmark.py:runlocal \
      --workdir=/tmp/diva/rule_benchmark_local
"""

from configs import rule_benchmark as default_config
from diva_jax.app import cli
from experiments.benchmarks import rule_benchmark

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, rule_benchmark.run)
