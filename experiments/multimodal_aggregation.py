r"""Multi-modal aggregation with the dataset derivative.

  python -m experiments.multimodal_aggregation --workdir=/tmp/diva/multimodal
  python -m experiments.multimodal_aggregation \
      --config=configs/multimodal_aggregation.py:runlocal --workdir=/tmp/diva/multimodal_local
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.paper import multimodal_aggregation

# The default config, found from any working directory (not relative to the cwd).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "multimodal_aggregation.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, multimodal_aggregation.run)
