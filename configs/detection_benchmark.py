r"""Mislabel detection across kinds of data (the detection table in docs/studies.md).

  python -m experiments.detection_benchmark --workdir=/tmp/diva/detection

Tables (scikit-learn's bundled breast_cancer, wine, iris, digits as a 64-column table and
digits' parity as a binary one; palmerpenguins' species; statsmodels' fair and anes96, binary)
and image embeddings (EfficientNet-Lite0 features of
MNIST-5k, digits and animal-MNIST), at 10% / 20% / 40% uniform and 20% pairwise noise, 5
seeds; the default rule against the paper's derivative, loo_removal_effect and cleanlab
(5-fold CV logistic and HistGradientBoosting, KNN-Shapley). `:runlocal`: three tables, 20%
uniform noise, 2 seeds, our methods and cleanlab-CV logistic, about 20 seconds. `:tables`:
the tables only (no feature extraction).
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.datasets = ("breast_cancer", "wine", "iris", "digits_table", "digits_parity", "penguins",
                "fair", "anes96", "mnist5k", "digits", "animal_mnist")
  c.noise = ("uniform:0.1", "uniform:0.2", "uniform:0.4", "pairwise:0.2")
  c.seeds = 5
  c.seed = 0                      # the first seed (seeds seed .. seed + seeds - 1)
  c.methods = ("diva_default", "diva_plain", "loo_removal", "cleanlab_cv_logistic",
               "cleanlab_cv_hgb", "cleanlab_knn_shapley")
  c.max_train = 0                 # keep the first rows of each dataset (0: all)
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.datasets = ("breast_cancer", "iris", "digits_parity")
  c.noise, c.seeds = ("uniform:0.2",), 2
  c.methods = ("diva_default", "diva_plain", "loo_removal", "cleanlab_cv_logistic")


def _tables(c):
  c.datasets = ("breast_cancer", "wine", "iris", "digits_table", "digits_parity", "penguins",
                "fair", "anes96")


VARIANTS = {"runlocal": _runlocal, "tables": _tables}
