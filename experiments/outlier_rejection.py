r"""Outlier / mislabel rejection with the dataset derivative (and reweighting).

  python -m experiments.outlier_rejection --workdir=/tmp/diva/outliers
  python -m experiments.outlier_rejection --config=configs/outlier_rejection.py:runlocal \
      --workdir=/tmp/diva/outliers_local

See configs/outlier_rejection.py for the options and expected numbers.
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.paper import outlier_rejection

# The default config, found from any working directory (not relative to the cwd).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "outlier_rejection.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, outlier_rejection.run)
