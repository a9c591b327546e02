r"""Removing the flagged samples against removing exactly the noisy ones: label-free detectors
against the default and random errors (the removal table in docs/).

  python -m experiments.removal_study --workdir=/tmp/diva/removal
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import removal_study

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "removal_study.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, removal_study.run)
