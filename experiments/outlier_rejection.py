r"""Outlier / mislabel rejection with the dataset derivative (and reweighting).

  python -m experiments.outlier_rejection --workdir=/tmp/diva/outliers
  python -m experiments.outlier_rejection --config=configs/outlier_rejection.py:runlocal \
      --workdir=/tmp/diva/outliers_local

See configs/outlier_rejection.py for the options and expected numbers.
"""

import configs
from diva_jax.runs import cli
from diva_jax.runs import outlier_rejection

if __name__ == "__main__":
  cli.define_and_run(configs.path("outlier_rejection.py"), outlier_rejection.run)
