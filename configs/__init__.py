"""Configs of the experiment binaries (`experiments/`), in ml_collections' config-file format.

Each `get_config(arg)` takes a comma-separated list of variants, applied in order, so they
combine: `--config=configs/outlier_rejection.py:runlocal,pixels`.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
  """Absolute path of the config file `name` (e.g. 'outlier_rejection.py'), whatever the cwd."""
  return os.path.join(CONFIG_DIR, name)


def apply_variants(config, arg, variants: Mapping[str, Callable[[object], None]]):
  """Applies the comma-separated variants named in `arg` ('' or None: none) to `config`."""
  names = [v.strip() for v in (arg or "").split(",") if v.strip()]
  unknown = [v for v in names if v not in variants]
  if unknown:
    raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}: expected a "
                     f"comma-separated list of {', '.join(variants)}.")
  for name in names:
    variants[name](config)
  return config
