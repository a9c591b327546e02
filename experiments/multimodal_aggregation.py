r"""Multi-modal aggregation with the dataset derivative.

  python -m experiments.multimodal_aggregation --workdir=/tmp/diva/multimodal
  python -m experiments.multimodal_aggregation \
      --config=configs/multimodal_aggregation.py:runlocal --workdir=/tmp/diva/multimodal_local
"""

import configs
from diva_jax.runs import cli
from diva_jax.runs import multimodal_aggregation

if __name__ == "__main__":
  cli.define_and_run(configs.path("multimodal_aggregation.py"), multimodal_aggregation.run)
