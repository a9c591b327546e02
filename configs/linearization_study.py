r"""What linearising more of EfficientNet-Lite0 buys (docs/results.md and docs/studies.md): last-layer features against also linearising the head (last 1x1 conv + BN) and the
last MBConv block, on MNIST-5k, Animal-MNIST and digits, clean and 20% uniform noise, 3 seeds.

  python -m experiments.linearization_study --workdir=/tmp/diva/linearization

`:runlocal`: digits only, 200 train / 100 test images at 32 px, one seed, 20% noise, the head
only at projection width 64 (25 s).

Cost (2 shared CPU cores): the default run took 27 min. The projected Jacobian
features take `jacobian_width` forward-mode passes per image: 70-140 ms/image for the head and
430-540 ms/image for the last block at width 512 (last-layer features: 7 ms); the whole network
~7 s/image at width 256 (not affordable here; add 'all=^params/' to `linearizations` on a
bigger machine).

Expected (docs/results.md and docs/studies.md): no consistent gain from linearising more; detection AUROC
0.985-0.993 in every noisy cell, test error after removing the flagged samples within a seed's
std of last-layer features except the head on digits (7.87 -> 5.47%).
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.datasets = ("mnist5k", "animal_mnist", "digits")
  c.linearizations = (
      "last_layer",
      r"head=^params/head_(conv|bn)/",                    # the `:jacobian` variant's default
      r"last_block=^params/(head_(conv|bn)|block_15)/",   # + the last MBConv block
  )
  c.noise_rates = (0.0, 0.2)
  c.seeds = 3
  c.max_train = 500              # first images of each split (0 = all)
  c.max_test = 250
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64              # last-layer feature extraction
  c.jacobian_width = 512         # random projection width of each Jacobian block
  c.jacobian_seed = 0            # fixed projection (same directions for every dataset)
  c.jacobian_batch_size = 128    # images per projected-Jacobian call (amortises the draws)
  c.loss = "ce"
  c.temperature = 0.3
  c.detection_reg_multiplier = 10.0
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.datasets, c.seeds, c.noise_rates = ("digits",), 1, (0.2,)
  c.max_train, c.max_test, c.image_size = 200, 100, 32
  c.linearizations = c.linearizations[:2]
  c.jacobian_width = 64


VARIANTS = {"runlocal": _runlocal}
