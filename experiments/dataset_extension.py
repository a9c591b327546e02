r"""Dataset extension with the dataset derivative (DIVA Extend) vs uniform picks and the
whole pool.

  python -m experiments.dataset_extension --workdir=/tmp/diva/extension
  python -m experiments.dataset_extension --config=configs/dataset_extension.py:runlocal \
      --workdir=/tmp/diva/extension_local
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.paper import dataset_extension

# The default config, found from any working directory (not relative to the cwd).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "dataset_extension.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, dataset_extension.run)
