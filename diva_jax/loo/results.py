"""The result type of every LOO entry point: in memory, streamed and sharded."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["LooResult"]


class LooResult(NamedTuple):
  """The LOO loss and the dataset derivative, from one factorisation.

  Unpacks as a pair: `value, derivative = diva_jax.loo_loss_and_derivative(...)`. Every
  entry point (`loo_loss_and_derivative`, `streamed_loo_loss_and_derivative`,
  `diva_jax.parallel.multihost.sharded_loo_loss_and_derivative`, `validation_loss_and_derivative`) returns
  one with the same types: `jax.Array`s in the compute dtype.

  Attributes:
    value: 0-d mean LOO loss over the evaluated samples.
    derivative: [n] dL_loo / d weights (positive: the sample hurts).
  """
  value: Any
  derivative: Any
