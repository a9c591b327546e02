r"""The automatic threshold against the sign rule (the threshold table in docs/).

  python -m experiments.threshold_study --workdir=/tmp/diva/threshold
"""

from configs import threshold_study as default_config
from diva_jax.app import cli
from experiments.studies import threshold_study

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, threshold_study.run)
