r"""Curate your own dataset: label issues ranked by the dataset derivative, and a report.

Run on a folder of images with one subfolder per class (or a CSV of path,label rows, a .npz of
embeddings and labels, or a TFDS name):

  diva-curate --workdir=/tmp/diva/curate --config.source=/path/to/photos
  python -m experiments.curate ...   (the same, from a checkout)

Variants: `:runlocal` (at most 1,000 images at 64 px), `:pixels` (raw pixels, no backbone).
Outputs: label_issues.csv, cleaned_labels.csv, label_issues.npy, label_quality_scores.npy,
report.html, metrics.json (see diva_jax/app/curate.py).
"""

import ml_collections

from diva_jax.app import variants
from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.source = ""                  # image folder | .csv (path,label[,id]) | table .csv/.parquet
                                 # (with label_column) | .npz/.npy | TFDS name
  c.labels_path = ""             # labels of a .npy of embeddings ("" = <stem>_labels.npy)
  c.label_column = ""            # a table (.csv / .parquet): its label column ("" = not a table)
  c.id_column = ""               # a table: its column of unique row ids ("" = row numbers)
  c.split = "train"              # TFDS split
  c.data_dir = ""                # TFDS data_dir
  c.cache_dir = ""               # feature cache ("" = <workdir>/cache)
  c.max_images = 0               # 0 = all
  c.backbone = "efficientnet_lite0"  # efficientnet_lite0 | pixels | flax
  c.flax_module = ""             # backbone='flax': 'package.module:Name' or 'file.py:Name'
  c.flax_checkpoint = ""         # backbone='flax': orbax checkpoint dir of its variables
  c.flax_method = ""             # backbone='flax': the method giving [n, d] features
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0
  c.loss = "ce"                  # the detection setting of the outlier-rejection results
  c.temperature = 0.3
  c.reg = 0.0                    # ridge reg > 0, or 0.0 = the minimiser of the exact LOO error
  c.detection_reg_multiplier = 0.0  # the derivative at reg x this; 0.0: the library's rule
  c.outer = "weighted"           # the LOO loss's outer mean: weighted (own term) | mean (paper)
  c.eps = 0.0                    # flag derivative > eps
  c.threshold = "auto"           # auto: only the k most harmful, k = estimate_num_issues | sign
  c.relabel = False              # cleaned_labels.csv: relabel flagged samples instead of dropping
  c.report_grid = 2000           # most harmful samples shown in report.html
  c.planted = ""                 # a JSON {"flipped": [paths or ids]} of known label errors to
                                 # score the flags against (F1, AUROC); "" = <source>
                                 # .planted_noise.json when it exists (export_image_folder's)
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.max_images, c.image_size = 1000, 64


VARIANTS = {"runlocal": _runlocal, "pixels": variants.pixels}
