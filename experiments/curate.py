r"""Find the label issues in your own dataset with the dataset derivative.

  python -m experiments.curate --workdir=/tmp/diva/curate --config.source=/path/to/photos

See configs/curate.py for the options and diva_jax/runs/paper/curate.py for the outputs.
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.paper import curate

# The default config, found from any working directory (not relative to the cwd).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "curate.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, curate.run)
