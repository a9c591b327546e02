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


# Variants several binaries share (a config that needs another meaning defines its own).


def digits(config) -> None:
  """scikit-learn's 8x8 digits (1,438 train images) instead of the default dataset."""
  config.dataset = "digits"


def pixels(config) -> None:
  """Raw pixels instead of a backbone."""
  config.backbone = "pixels"


def jacobian(config) -> None:
  """Also linearise the backbone's last 1x1 conv + batch-norm (projected Jacobian features)."""
  config.linearize = "last_layer+jacobian"
