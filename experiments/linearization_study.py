r"""What linearising more of the backbone buys (the linearisation table in docs/).

  python -m experiments.linearization_study --workdir=/tmp/diva/linearization
"""

from configs import linearization_study as default_config
from diva_jax.app import cli
from experiments.studies import linearization_study

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, linearization_study.run)
