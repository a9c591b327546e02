"""The empirical NTK and Jacobian features of any JAX function: `api` (`empirical_ntk_fn`,
`jacobian_features`, `projected_jacobian_features`, `ntk_plan`), `problem` (the per-leaf
setup), `blocks` and `contraction` (the generic implementations), `feature_maps` (the
Jacobian feature maps), and the structured path on the function's jaxpr: `jaxpr` (tracing), `rules` (dense, conv, elementwise,
tied weights), `plan` (the per-leaf cost model), `structured` (the contraction)."""

from diva_jax.ntk.api import *  # noqa: F401,F403
from diva_jax.ntk.api import __all__  # noqa: F401
