"""What only the experiment runs share: sweeps over configs (`sweep`) and hyperparameter
grids (`hyper`). The pieces `curate` needs too live in the library, `diva_jax.app`."""

import os

import experiments

# The folder holding the `experiments` package (the repository root in a checkout): what a
# child process needs on its PYTHONPATH, and where `experiments/peers` lives.
ROOT = os.path.dirname(os.path.abspath(list(experiments.__path__)[0]))
