r"""Reweighting rules against a random reweighting of the same spread (docs/studies.md (reweighting) table).

  python -m experiments.reweight_study --workdir=/tmp/diva/reweight
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import reweight_study

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "reweight_study.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, reweight_study.run)
