r"""Multi-modal aggregation with the dataset derivative.

  python -m experiments.multimodal_aggregation --workdir=/tmp/diva/multimodal
  python -m experiments.multimodal_aggregation \
      --config=configs/multimodal_aggregation.py:runlocal --workdir=/tmp/diva/multimodal_local
"""

from configs import multimodal_aggregation as default_config
from diva_jax.app import cli
from experiments.paper import multimodal_aggregation

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, multimodal_aggregation.run)
