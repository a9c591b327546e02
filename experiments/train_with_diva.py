r"""DIVA in the training loop, against plain training, one-shot curation, a robust loss and
the oracles (configs/train_with_diva.py).

  python -m experiments.train_with_diva --workdir=/tmp/diva/train_with_diva [--config=configs/train_with_diva.py:runlocal]
"""

from configs import train_with_diva as default_config
from diva_jax.app import cli
from experiments.studies import train_with_diva

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, train_with_diva.run)
