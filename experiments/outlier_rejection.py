r"""Outlier / mislabel rejection with the dataset derivative (and reweighting).

  python -m experiments.outlier_rejection --workdir=/tmp/diva/outliers
  python -m experiments.outlier_rejection --config=configs/outlier_rejection.py:runlocal \
      --workdir=/tmp/diva/outliers_local

See configs/outlier_rejection.py for the options and expected numbers.
"""

from configs import outlier_rejection as default_config
from diva_jax.app import cli
from experiments.paper import outlier_rejection

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, outlier_rejection.run)
