"""Sweeps in the style of big_vision's `get_hyper(hyper)`: a config file may define

    def get_hyper(hyper):
      return hyper.product([hyper.sweep("config.noise_rate", [0.1, 0.2]),
                            hyper.sweep("config.loss", ["mse", "ce"])])

which expands to a list of {dotted key: value} overrides, one per run.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from diva_jax.app.errors import ConfigError

__all__ = ["sweep", "product", "chain", "fixed"]


def sweep(key: str, values: Sequence[Any]) -> list[dict]:
  if not key.startswith("config."):
    raise ConfigError(f"sweep keys start with 'config.', got {key!r}.")
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[dict]:
  return sweep(key, [value])


def product(sweeps: Sequence[list[dict]]) -> list[dict]:
  out = []
  for combo in itertools.product(*sweeps):
    merged = {}
    for d in combo:
      merged.update(d)
    out.append(merged)
  return out


def chain(*sweeps: list[dict]) -> list[dict]:
  return [d for s in sweeps for d in s]
