r"""Dataset extension variants (LOO on core vs core + picks, reg fixed vs re-chosen per round,
stopping rules) and a multi-source setting with a noisy and a shifted source (the
extension tables in docs/studies.md).

  python -m experiments.extension_study --workdir=/tmp/diva/extension_study

Expected (5 seeds): every Extend variant beats uniform picks at every budget; LOO
on core + picks is best at 400 picks (12.5% against 14.4% for the paper's core-only rule,
whole pool 12.1%, pool minus the DIVA-flagged 9.3%); re-choosing reg per round does not help.
Multi-source: DIVA's 400 picks 11.7% against uniform 14.1% and all sources 11.4%; the sources
with a negative group derivative (clean and shuffled, never the noisy one) 8.8%.
`:runlocal`: digits pixels, 2 seeds, small sizes (the tests' setting).
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.data_dir = ""
  c.cache_dir = ""
  c.max_train = 0
  c.max_test = 0
  c.backbone = "efficientnet_lite0"
  c.linearize = "last_layer"
  c.linearize_params = r"^params/head_(conv|bn)/"
  c.jacobian_width = 1024
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0
  c.seeds = 5
  c.loss = "mse"
  c.temperature = 0.3
  c.reg = 0.0                    # 0.0 = the exact-LOO optimum of each fit
  c.derivative_reg_multiplier = 10.0
  c.k = 20                       # picks per round
  # Part 1: extension.
  c.extension_variants = ("core/fixed", "core/reselect", "core+picks/fixed",
                          "core+picks/reselect")
  c.core_size = 100
  c.pool_size = 1900
  c.pool_noise_rate = 0.5
  c.budgets = (50, 100, 200, 400)
  # Part 2: multi-source (clean, noisy-label and pixel-shuffled sources).
  c.sources = True
  c.shots = 20
  c.source_size = 600
  c.noisy_source_rate = 0.8
  c.source_budget = 400
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.dataset, c.backbone, c.seeds, c.max_test = "digits", "pixels", 2, 0
  c.core_size, c.pool_size, c.budgets, c.k = 50, 400, (20, 40, 80), 20
  c.shots, c.source_size, c.source_budget = 5, 200, 100


VARIANTS = {"runlocal": _runlocal}
