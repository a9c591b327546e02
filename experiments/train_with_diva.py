r"""DIVA in the training loop, against plain training, one-shot curation, a robust loss and
the oracles (configs/train_with_diva.py).

  python -m experiments.train_with_diva --workdir=/tmp/diva/train_with_diva [--config=configs/train_with_diva.py:runlocal]
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import train_with_diva

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "train_with_diva.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, train_with_diva.run)
