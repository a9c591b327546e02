r"""The automatic threshold against the sign rule (the threshold table in docs/).

  python -m experiments.threshold_study --workdir=/tmp/diva/threshold
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import threshold_study

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "threshold_study.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, threshold_study.run)
