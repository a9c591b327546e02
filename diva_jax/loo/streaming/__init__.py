"""The primal form with features streamed in row blocks: `driver` (the three passes, the
sources), `host` (the passes in SciPy BLAS), `xla` (the passes jitted, rows sharded on a
mesh)."""

from diva_jax.loo.streaming.driver import ArraySource
from diva_jax.loo.streaming.driver import BlockSource
from diva_jax.loo.streaming.driver import FunctionSource
from diva_jax.loo.streaming.driver import NpyFileSource
from diva_jax.loo.streaming.driver import npy_source
from diva_jax.loo.streaming.driver import streamed_loo_loss_and_derivative

__all__ = ["ArraySource", "BlockSource", "FunctionSource", "NpyFileSource", "npy_source",
           "streamed_loo_loss_and_derivative"]
