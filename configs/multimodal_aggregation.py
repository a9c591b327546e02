r"""Multi-modal aggregation: 20-shot MNIST-5k core + candidates from scikit-learn's digits
(another sensor) and font-rendered digits (printed glyphs), EfficientNet-Lite0 features.

  python -m experiments.multimodal_aggregation --workdir=/tmp/diva/multimodal
  python -m experiments.multimodal_aggregation --config=configs/multimodal_aggregation.py:runlocal \
      --workdir=/tmp/diva/multimodal_local

Variants (comma-separated, they combine: `:runlocal,pixels`): `:runlocal` (smaller), `:digits`
(core from scikit-learn's 8x8 digits; candidates its pool and printed glyphs), `:pixels` (raw
pixels, every modality resized to the core's image shape).

With your own embeddings (e.g. CLIP image + text, the paper's experiment):

  python -m experiments.multimodal_aggregation --workdir=/tmp/diva/clip \
      --config.core_npz=core.npz --config.test_npz=test.npz \
      --config.candidate_npz='("text=text.npz",)'

Expected (default variant, measured): test error on MNIST-5k test 13.5% with the
200-image core, 17.7% with all 2,038 candidates, 13.3% with DIVA's 400 picks (240 sklearn
digits, 160 printed) and 13.3% with 400 uniform picks; the modality weights after one group
step: core 1.20, sklearn digits 0.95, printed digits 0.96.
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.data_dir = ""
  c.cache_dir = ""
  c.max_test = 0
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0
  c.shots = 20                   # core images per class (the paper: 20)
  c.candidate_modalities = ("sklearn_digits", "printed_digits")  # | mnist_pool (the
  # rest of the core dataset's train split)
  c.glyphs_per_class = 60
  c.max_per_modality = 0         # 0 = all
  c.core_npz = ""                # user embeddings instead of images: features, labels
  c.test_npz = ""
  c.candidate_npz = ("",)        # ("name=path.npz", ...)
  c.budget = 400                 # most candidates added (0 = no limit)
  c.k = 10
  c.loss = "mse"
  c.temperature = 0.3
  c.reg = 0.0                    # ridge reg > 0, or 0.0 = the exact-LOO optimum of each fit
  c.derivative_reg_multiplier = 10.0
  c.group_steps = 1              # modality-weight steps (0 = no group reweighting)
  c.plots = True
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.image_size, c.max_test, c.shots = 64, 300, 10
  c.glyphs_per_class, c.max_per_modality, c.budget = 20, 300, 100


def _digits(c):  # core from scikit-learn's 8x8 digits; candidates: its pool and glyphs
  c.dataset = "digits"
  c.candidate_modalities = ("mnist_pool", "printed_digits")


def _pixels(c):  # raw pixels, every modality resized to the core's image shape
  c.backbone = "pixels"


VARIANTS = {"runlocal": _runlocal, "digits": _digits, "pixels": _pixels}


def get_hyper(hyper):
  return hyper.product([hyper.sweep("config.shots", [5, 20, 50]),
                        hyper.sweep("config.seed", [0, 1, 2])])
