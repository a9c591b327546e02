r"""Removing the flagged samples against removing exactly the noisy ones: label-free
detectors against the default and against random errors of the same number.

  python -m experiments.removal_study --workdir=/tmp/diva/removal

Expected (5 seeds, 20% uniform noise, EfficientNet-Lite0 features, about 5 min;
the removal table in docs/): no detector gets within 0.3 points of the oracle removal on both
MNIST-5k and animal-MNIST (the plain derivative: 0.52 / 0.46; on shifted views, the binary's
default now: 0.42 / 0.26); random errors as many as the plain derivative's cost 0.08 / 0.19;
the RBF head has the best F1 (0.941 / 0.958 against 0.926 / 0.940; shifted views 0.937 /
0.952). 18 min for this and the other settings in docs/studies.md with a fresh feature cache.
`:runlocal`: digits pixels, 2 seeds, about 10 seconds.
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("mnist5k:0", "animal_mnist:3000")  # dataset:max_train (0 = all)
  c.noise_rate = 0.2
  c.seeds = 5
  c.detectors = ("derivative", "shift_views", "rank_ensemble", "class_conditional",
                 "second_round", "cleaned_confidence", "rbf_kernel", "linear_and_rbf",
                 "knn_disagreement", "readmit", "relabel", "soft_relabel", "remove_reweight",
                 "oracle_count", "random_errors")
  c.detection_reg_multiplier = 10.0  # the derivative at this multiple (> 0) of the exact-LOO reg
  c.ensemble_multipliers = (3.0, 10.0, 30.0, 100.0)
  c.rbf_bandwidth = 1.0          # x the median squared distance between training features
  c.rbf_max_n = 12000            # the [n, n] kernel / distances (float64): 1.15 GB at 12,000
  c.knn = 10
  c.view_shift = 0.07            # shift_views: the shift, a fraction of the image side
  c.random_draws = 2
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  c.loss = "ce"
  c.temperature = 0.3
  c.reg = 0.0
  c.seed = 0
  c.max_train = 0
  c.max_test = 0
  c.dataset = "mnist5k"
  c.noise_type = "uniform"
  c.linearize = "last_layer"
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.settings, c.seeds, c.backbone = ("digits:0",), 2, "pixels"


VARIANTS = {"runlocal": _runlocal}
