"""Configs of the experiment binaries (`experiments/`), in ml_collections' config-file format.

Each `get_config(arg)` takes a comma-separated list of variants, applied in order, so they
combine: `--config=configs/outlier_rejection.py:runlocal,pixels`.
"""

from __future__ import annotations

import os

from diva_jax.runs.variants import apply_variants  # pylint: disable=unused-import

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
  """Absolute path of the config file `name` (e.g. 'outlier_rejection.py'), whatever the cwd."""
  return os.path.join(CONFIG_DIR, name)
