r"""Which reweighting rule lowers the test error, and by more than a random reweighting of the
same spread? (the reweighting table in docs/)

  python -m experiments.reweight_study --workdir=/tmp/diva/reweight

Settings are 'dataset:backbone:per_class:max_train' (per_class images per class drawn per seed
from the first max_train train images; 0 = all). Rules are 'loss/xreg multiple/step rule/steps'.
Expected (5 seeds): on clean data no rule beats the random control beyond chance
(1 of 152 cells); the default `mse/x1/norm0.2/1` changes the clean error by -0.01 to +0.02
points and lowers it by 0.20-0.34 points under 20% noise; the line search at 10x reg, 3 steps,
gains 2.2 points on noisy MNIST-5k 20/class but costs up to +1.8 on clean data.
`:large`: the whole digits train split (1,438 EfficientNet features), a smaller grid.
`:runlocal`: digits pixels, 2 seeds, a small grid (the tests' setting).
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("mnist5k:efficientnet_lite0:20:0",      # 200 images: room to gain
                "animal_mnist:efficientnet_lite0:30:3000",  # 300 images
                "digits:pixels:20:0")                     # raw pixels, 200 images
  c.noise_rates = (0.0, 0.2)
  c.seeds = 5
  c.losses = ("mse", "ce@0.3")   # the derivative's loss ('ce@T': cross-entropy at T)
  c.reg_multipliers = (1.0, 10.0)  # derivative at (that loss's exact-LOO reg) x this
  c.step_rules = ("raw0.1", "norm0.2", "ls1.0")  # also e.g. "norm0.05", "norm1.0", "ls0.5"
  c.steps = (1, 2, 3, 5)
  c.random_repeats = 3           # permutations of the weights averaged per run (control)
  c.validation_folds = 2         # k-fold split of the training set to choose a rule (not test)
  c.default_rule = "mse/x1/norm0.2/1"  # the library default of `curation.reweight` (marked)
  c.data_dir = ""
  c.cache_dir = ""
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.settings, c.seeds, c.noise_rates = ("digits:pixels:20:0",), 2, (0.0, 0.3)
  c.losses, c.reg_multipliers = ("mse",), (1.0,)
  c.step_rules, c.steps, c.random_repeats = ("norm0.2", "ls1.0"), (1, 3), 2


def _large(c):  # a whole train split (1,438 images, little room to gain): a smaller grid
  c.settings = ("digits:efficientnet_lite0:0:0",)
  c.reg_multipliers, c.step_rules, c.steps = (1.0,), ("norm0.2", "ls1.0"), (1, 3)
  c.random_repeats = 2


VARIANTS = {"runlocal": _runlocal, "large": _large}
