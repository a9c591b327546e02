"""Config variants: `get_config("runlocal,pixels")` applies named variants in order, so they
combine. Lives in the package (not in configs/) so a config file loaded by path from any
directory can import it."""

from __future__ import annotations

from typing import Callable, Mapping


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
