r"""What linearising more of the backbone buys (the linearisation table in docs/).

  python -m experiments.linearization_study --workdir=/tmp/diva/linearization
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import linearization_study

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "linearization_study.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, linearization_study.run)
