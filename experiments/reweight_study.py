r"""Reweighting rules against a random reweighting of the same spread (docs/studies.md (reweighting) table).

  python -m experiments.reweight_study --workdir=/tmp/diva/reweight
"""

from configs import reweight_study as default_config
from diva_jax.app import cli
from experiments.studies import reweight_study

if __name__ == "__main__":
  cli.define_and_run(default_config.__file__, reweight_study.run)
