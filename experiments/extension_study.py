r"""Dataset extension variants and a multi-source setting with a source to reject (docs/results.md and docs/studies.md).

  python -m experiments.extension_study --workdir=/tmp/diva/extension_study
"""

from configs import extension_study as default_config
from diva_jax.app import cli
from experiments.studies import extension_study

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, extension_study.run)
