r"""Dataset extension: MNIST-5k, a 100-image labelled core, a 3,900-image pool of which 50%
is mislabelled; EfficientNet-Lite0 features.

  python -m experiments.dataset_extension --workdir=/tmp/diva/extension
  python -m experiments.dataset_extension --config=configs/dataset_extension.py:runlocal \
      --workdir=/tmp/diva/extension_local

Expected (default variant): DIVA's picks are almost all clean, while half of a uniform pick
is mislabelled; its picks are redundant (close to the core), so the whole pool, with its many
more clean samples, can still do better. How DIVA compares with uniform picks at each
budget is in metrics.json (`diva`, `uniform`); docs/results.md and docs/studies.md has measured numbers.
Variants (comma-separated, they combine): `:runlocal`, `:digits`, `:pixels`, `:jacobian`.
"""

import ml_collections

from diva_jax.app import variants
from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.data_dir = ""
  c.cache_dir = ""
  c.max_train = 0
  c.max_test = 0
  c.backbone = "efficientnet_lite0"  # efficientnet_lite0 | pixels
  c.linearize = "last_layer"     # last_layer | last_layer+jacobian
  c.linearize_params = r"^params/head_(conv|bn)/"  # regex over parameter paths (jacobian)
  c.jacobian_width = 1024        # random projection width of the Jacobian features
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0
  c.core_size = 100
  c.pool_noise_rate = 0.5        # fraction of the pool mislabelled
  c.budgets = (50, 100, 200, 400, 800)
  c.k = 10                       # samples added per round
  c.loss = "mse"                 # mse | ce
  c.derivative_reg_multiplier = 10.0  # derivative at (exact-LOO reg of the core) x this
  c.temperature = 0.3
  c.reg = 0.0                    # ridge reg > 0, or 0.0 = the exact-LOO optimum of each fit
  c.uniform_repeats = 3          # seeds of the uniform-pick baseline (>= 1)
  c.plots = True
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.max_train, c.max_test, c.image_size = 1000, 300, 64
  c.core_size, c.budgets, c.k, c.uniform_repeats = 50, (25, 50, 100, 200), 10, 2


VARIANTS = {"runlocal": _runlocal, "digits": variants.digits, "jacobian": variants.jacobian,
            "pixels": variants.pixels}


def get_hyper(hyper):
  return hyper.product([hyper.sweep("config.loss", ["mse", "ce"]),
                        hyper.sweep("config.pool_noise_rate", [0.0, 0.3, 0.6])])
