r"""DIVA in the training loop against plain training, one-shot curation, generalized
cross-entropy and the oracles (experiments/studies/train_with_diva.py).

  python -m experiments.train_with_diva --workdir=/tmp/diva/train_with_diva

EfficientNet-Lite0 at 96 px, frozen before block `trunk` (the activations entering it cached)
and trained from there: `block:16` trains the head convolution and a new classifier on the
cached 3x3x320 activations; the derivative is taken on the current pooled features. Results
and their command are in docs/studies.md ("DIVA in the training loop"). Variants:
`:runlocal` (digits, raw pixels, an MLP head, one seed, 20% uniform noise, 8 epochs: a smoke
run of a few seconds); `:mlp` (a 256-unit MLP head on the frozen pooled features, the first
comparison's network); `:accelerator` (`block:0`: the whole network from the images at
224 px, 5 seeds, each batch split over every device of every process: for GPUs or TPUs;
several hosts: one process each, with the `--coordinator_address`, `--num_processes` and
`--process_id` flags).
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("mnist5k:0", "animal_mnist:3000")   # dataset:max_train (0 = all)
  c.noise = ("uniform:0.2", "uniform:0.4", "pairwise:0.2")
  c.seeds = 3
  # Also available: "diva_both" (current and initial features).
  c.methods = ("plain", "one_shot", "diva", "diva_frozen", "gce", "oracle", "true_labels")
  c.trunk = "block:16"            # 'mlp' (a head on the pooled features) or 'block:K'
  c.backbone_learning_rate = 1e-4  # Adam, the pretrained layers that are trained
  c.epochs = 12
  c.train_batch_size = 128
  c.learning_rate = 1e-3         # Adam, the new layers' parameters
  c.hidden = 256                 # trunk='mlp': the head's hidden units
  c.diva_step = "line_search"    # the LOO loss chooses the step size; or "normalized"
  c.diva_lr = 1.0                # the largest weight change tried first (normalized: of
                                 # every step)
  c.diva_inner_steps = 1         # weight steps per derivative update (same features)
  c.diva_interval = 1            # epochs between weight steps
  c.diva_start = 1               # first epoch with a weight step (0: at initialisation)
  c.derivative_reg_multiplier = 10.0  # the derivative's reg: this x the exact-LOO optimum
  c.diva_reg = "first_step"      # chosen once, at the first weight step; or "every_step"
  c.temperature = 0.3            # the LOO cross-entropy's temperature
  c.gce_q = 0.7                  # generalized cross-entropy (Zhang & Sabuncu 2018 default)
  c.plots = True
  # Features (as in the other binaries; the datasets, sizes and noise are `settings` and
  # `noise` above).
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  c.max_test = 0
  c.seed = 0                     # the first seed: seeds seed .. seed + seeds - 1
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.settings, c.backbone, c.trunk, c.seeds = ("digits:0",), "pixels", "mlp", 1
  c.noise, c.epochs = ("uniform:0.2",), 8


def _mlp(c):
  c.trunk = "mlp"


def _accelerator(c):
  c.trunk, c.image_size, c.seeds = "block:0", 224, 5


VARIANTS = {"runlocal": _runlocal, "mlp": _mlp, "accelerator": _accelerator}
