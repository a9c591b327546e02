r"""Dataset extension with the dataset derivative (DIVA Extend) vs uniform picks and the
whole pool.

  python -m experiments.dataset_extension --workdir=/tmp/diva/extension
  python -m experiments.dataset_extension --config=configs/dataset_extension.py:runlocal \
      --workdir=/tmp/diva/extension_local
"""

import configs
from diva_jax.runs import cli
from diva_jax.runs import dataset_extension

if __name__ == "__main__":
  cli.define_and_run(configs.path("dataset_extension.py"), dataset_extension.run)
