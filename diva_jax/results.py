"""Result types shared by the in-memory and streamed LOO functions."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["LooResult"]


class LooResult(NamedTuple):
  """The LOO loss and the dataset derivative, from one factorisation.

  Unpacks as a pair: `value, derivative = diva_jax.loo_loss_and_derivative(...)`.

  Attributes:
    value: scalar mean LOO loss over the evaluated samples.
    derivative: [n] dL_loo / d weights (positive: the sample hurts).
  """
  value: Any
  derivative: Any
