r"""The automatic threshold against the sign rule, over datasets, noise rates and seeds.

  python -m experiments.threshold_study --workdir=/tmp/diva/threshold

Expected (5 seeds; the threshold table in docs/): MNIST-5k 4,000 at 20% noise,
F1 0.877 (sign rule) -> 0.926 (automatic), oracle-k 0.932. `:runlocal`: digits only, 2 seeds.
Test error after removing the automatically flagged samples against removing exactly the noisy
ones (the target: within 0.3 points), 20% noise only:

  python -m experiments.threshold_study --workdir=/tmp/diva/threshold_removal \
      --config.settings='("mnist5k:0","animal_mnist:3000")' --config.noise_rates='(0.2,)'
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("mnist5k:0", "mnist5k:300", "animal_mnist:3000", "digits:0")  # dataset:max_train
  c.noise_rates = (0.1, 0.2, 0.4)
  c.seeds = 5
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  c.loss = "ce"
  c.temperature = 0.3
  c.detection_reg_multiplier = 0.0  # the derivative at reg x this; 0.0: the library's rule
  c.outer = "weighted"           # the LOO loss's outer mean: weighted (default) | mean (paper)
  # Also flag at a multiplier chosen without test labels or noise mask
  # (diva_jax.choose_detection_reg): "" = off, "loo" (weighted exact LOO error against the
  # noisy labels of the refit after removal) or "cv" (k-fold CV of the whole procedure).
  c.choose_multiplier = ""
  c.multiplier_grid = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
  c.choice_folds = 5
  c.choice_criterion = "mse"     # mse | error: what the rule minimises on held-out samples
  c.reg = 0.0
  c.linearize = "last_layer"
  c.linearize_params = r"^params/head_(conv|bn)/"
  c.jacobian_width = 1024
  c.seed = 0
  c.max_train = 0
  c.max_test = 0                 # test images embedded for the test errors (0 = all)
  c.test_errors = True           # test error before / after auto and oracle removal
  c.dataset = "mnist5k"
  c.noise_type = "uniform"
  c.noise_rate = 0.2
  c.cleanlab_max_n = 1500        # also run cleanlab on 5-fold CV probabilities up to this n
  c.logistic_max_iter = 300
  c.logistic_c = 1.0
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.settings, c.seeds, c.backbone = ("digits:0",), 2, "pixels"


VARIANTS = {"runlocal": _runlocal}
