r"""Removing the flagged samples against removing exactly the noisy ones: label-free detectors
against the default and random errors (the removal table in docs/).

  python -m experiments.removal_study --workdir=/tmp/diva/removal
"""

from configs import removal_study as default_config
from diva_jax.app import cli
from experiments.studies import removal_study

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, removal_study.run)
