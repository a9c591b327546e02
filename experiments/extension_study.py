r"""Dataset extension variants and a multi-source setting with a source to reject (docs/results.md and docs/studies.md).

  python -m experiments.extension_study --workdir=/tmp/diva/extension_study
"""

import os

from diva_jax.runs.lib import cli
from diva_jax.runs.studies import extension_study

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "extension_study.py")

if __name__ == "__main__":
  cli.define_and_run(DEFAULT_CONFIG, extension_study.run)
