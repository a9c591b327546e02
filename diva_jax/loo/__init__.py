"""Exact leave-one-out of weighted ridge regression and its gradient in the sample weights.

`api` (in-memory entry points and their custom VJP), `closed_form` (the maths, written once,
and the float32 guard), `backends` (SciPy BLAS on the host, XLA), `checks` (validation at
the public boundary), `reg` (`select_reg`), `heldout` (a separate validation set),
`streaming` (features read in row blocks), `results` (`LooResult`).
"""

from diva_jax.loo.api import dataset_derivative
from diva_jax.loo.api import loo_loss
from diva_jax.loo.api import loo_loss_and_derivative
from diva_jax.loo.api import loo_predictions
from diva_jax.loo.closed_form import LOSSES
from diva_jax.loo.closed_form import reference_loo_loss
from diva_jax.loo.heldout import ridge_predict
from diva_jax.loo.heldout import validation_derivative
from diva_jax.loo.heldout import validation_loss
from diva_jax.loo.heldout import validation_loss_and_derivative
from diva_jax.loo.reg import RegSelection
from diva_jax.loo.reg import select_reg
from diva_jax.loo.results import LooResult
from diva_jax.loo.streaming import streamed_loo_loss_and_derivative

__all__ = [
    "LOSSES", "LooResult", "RegSelection", "dataset_derivative", "loo_loss",
    "loo_loss_and_derivative", "loo_predictions", "reference_loo_loss", "ridge_predict",
    "select_reg", "streamed_loo_loss_and_derivative", "validation_derivative",
    "validation_loss", "validation_loss_and_derivative",
]
