r"""Dataset extension with the dataset derivative (DIVA Extend) vs uniform picks and the
whole pool.

  python -m experiments.dataset_extension --workdir=/tmp/diva/extension
  python -m experiments.dataset_extension --config=configs/dataset_extension.py:runlocal \
      --workdir=/tmp/diva/extension_local
"""

from configs import dataset_extension as default_config
from diva_jax.app import cli
from experiments.paper import dataset_extension

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, dataset_extension.run)
