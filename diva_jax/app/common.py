"""What every experiment run shares: the data and feature pipeline, reg choice, ridge test
errors and progress bars; it re-exports the workdir (`diva_jax.app.workdir`: config check,
resumable stages, atomic outputs, process-0-only writing) and the config checks
(`diva_jax.app.config_checks`), so a run imports one module.

Resumability: each expensive step is a *stage* whose result is saved atomically under
`<workdir>/stages/<name>.npz` (arrays) or `.json` (metrics). A rerun with the same workdir
and config loads finished stages and computes only the rest; every stage is deterministic
(seeded), so a run killed at any point and restarted ends with the same results as an
uninterrupted one. Feature extraction has its own validated cache (`diva_jax.features.extract`).

Nothing is written before the config is validated (`check_*` helpers, `ConfigError`) and the
data are loaded: `Workdir` writes `config.json` (and, with `overwrite`, deletes the outputs
of the run stored there before) only at its first write.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, NamedTuple, Optional

from absl import logging
import numpy as np

from diva_jax.app.errors import ConfigError

__all__ = [
    "Workdir",
    "ConfigError",
    "ConfigMismatchError",
    "check_int",
    "check_float",
    "check_choice",
    "check_subset",
    "setting_workdir",
    "check_common",
    "is_main_process",
    "progress_bar",
    "FeatureSet",
    "make_backbone",
    "load_split",
    "embed",
    "prepare_features",
    "choose_reg",
    "detection_multiplier",
    "test_error",
    "noisy_labels",
    "softmax",
    "one_hot",
]


# Re-exported: the runs reach every shared helper through `common`.
from diva_jax.app.config_checks import ConfigMismatchError  # noqa: E402,F401
from diva_jax.app.config_checks import check_choice  # noqa: E402,F401
from diva_jax.app.config_checks import check_subset  # noqa: E402,F401
from diva_jax.app.config_checks import check_common  # noqa: E402,F401
from diva_jax.app.config_checks import check_dataset  # noqa: E402,F401
from diva_jax.app.config_checks import check_detection_views  # noqa: E402,F401
from diva_jax.app.config_checks import check_float  # noqa: E402,F401
from diva_jax.app.config_checks import check_int  # noqa: E402,F401
from diva_jax.app.config_checks import check_ints  # noqa: E402,F401
from diva_jax.app.config_checks import check_settings  # noqa: E402,F401
from diva_jax.app.workdir import Workdir  # noqa: E402,F401
from diva_jax.app.workdir import _jsonable  # noqa: E402,F401
from diva_jax.app.workdir import is_main_process  # noqa: E402,F401
from diva_jax.app.workdir import remove_outputs  # noqa: E402,F401
from diva_jax.app.workdir import to_json  # noqa: E402,F401
from diva_jax import data
from diva_jax.curation import detect
from diva_jax import models
from diva_jax.data import augment
from diva_jax.features import extract as feats
from diva_jax.parallel import multihost as distributed
import dataclasses
import diva_jax


class progress_bar:
  """A tqdm progress bar on stderr as a `progress(done, total)` callback (process 0 only;
  shown on a terminal, or everywhere with DIVA_PROGRESS=1)."""

  def __init__(self, label: str):
    self.label = label
    self.enabled = is_main_process() and (sys.stderr.isatty() or
                                          os.environ.get("DIVA_PROGRESS") == "1")
    self._bar = None

  def __call__(self, done: int, total: int, *unused) -> None:
    if not self.enabled:
      return
    if self._bar is None:
      from tqdm import tqdm
      self._bar = tqdm(total=total, desc=self.label, file=sys.stderr, leave=True,
                       dynamic_ncols=True)
    if self._bar.total != total:
      self._bar.total = total
    self._bar.update(done - self._bar.n)
    if done >= total:
      self._bar.close()
      self._bar = None


# ----------------------------------------------------------------------------------------
# Data and features.
# ----------------------------------------------------------------------------------------


class FeatureSet(NamedTuple):
  features: np.ndarray     # [n, d] float32 (standardised, with a bias column)
  labels: np.ndarray       # [n] int
  images: np.ndarray       # [n, h, w, ch] uint8 (for image grids)
  class_names: tuple


def make_backbone(config):
  """The configured backbone: 'efficientnet_lite0' (ImageNet weights) or 'pixels'."""
  if config.backbone == "efficientnet_lite0":
    return models.efficientnet_lite0(pretrained=True, input_size=config.image_size)
  if config.backbone == "pixels":
    return None
  raise ConfigError(f"unknown backbone {config.backbone!r}: expected 'efficientnet_lite0' or "
                    "'pixels'.")


def load_split(config, split: str, max_examples: int):
  """(images, labels, class_names) of a split, the first `max_examples` (0 = all)."""
  # Multi-process: process 0 prepares a dataset that is not built yet (a TFDS build writes
  # into data_dir) before the others read it.
  if distributed.process_index() == 0:
    ds = data.load(config.dataset, split, data_dir=config.data_dir or None)
  distributed.barrier(f"dataset {config.dataset}/{split}")
  if distributed.process_index() != 0:
    ds = data.load(config.dataset, split, data_dir=config.data_dir or None)
  images, labels = ds.images, ds.labels
  if max_examples and max_examples < len(labels):
    images, labels = images[:max_examples], labels[:max_examples]
  if len(labels) == 0:
    raise ConfigError(f"dataset {config.dataset!r} split {split!r} is empty.")
  if len(np.unique(labels)) < 2:
    raise ConfigError(f"dataset {config.dataset!r} split {split!r} has a single class "
                     f"({int(labels[0])}): classification needs at least two.")
  return images, labels, ds.class_names


def embed(config, backbone, images, *, dataset: str, split: str, cache_dir: str,
          workdir: Optional[Workdir] = None):
  """[n, d] float32 raw features of uint8 images (cached on disk for real backbones).

  Every device of every process embeds its share of the rows (`diva_jax.parallel.multihost`); the
  rows each process embedded are added to `workdir.parallelism` (metrics.json)."""
  if backbone is None:  # raw pixels
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    return x
  res = feats.cached_features(backbone, images, dataset=dataset, split=split,
                              cache_dir=cache_dir, batch_size=config.batch_size,
                              progress=progress_bar(f"features {dataset}/{split}"))
  if not res.reused:
    logging.info("features %s/%s: embedded %d of %d rows on process %d of %d", dataset, split,
                 res.rows_embedded_per_process[distributed.process_index()], len(images),
                 distributed.process_index(), distributed.process_count())
  if workdir is not None:
    workdir.add_rows_embedded(res.rows_embedded_per_process)
  return np.asarray(res.features, np.float32)


def standardize(train: np.ndarray, *others: np.ndarray):
  """Centre by the train mean, scale by the train RMS norm, append a bias column of 1."""
  mean = train.mean(0, keepdims=True)
  scale = np.sqrt(np.mean(np.sum((train - mean) ** 2, 1))) + 1e-12
  out = []
  for x in (train,) + others:
    z = (x - mean) / scale
    out.append(np.concatenate([z, np.ones((len(z), 1), z.dtype)], 1).astype(np.float32))
  return out


def jacobian_backbone(config, backbone):
  """The backbone's Jacobian over a parameter subset, randomly projected to a width.

  Linearising the parameters matching `config.linearize_params` (a regex over paths like
  'params/head_conv/kernel') around their pretrained values adds, for each sample, the
  Jacobian of the backbone's features with respect to them: its kernel is the empirical
  NTK of that subset (traced over the feature outputs, neural-tangents' mean convention).
  `diva_jax.projected_jacobian_features` computes it by forward-mode products, never
  materialising the [n, parameters] Jacobian; seeded, so reproducible and cacheable.
  """
  if backbone is None:
    raise ConfigError("linearize='last_layer+jacobian' needs a network backbone, not 'pixels'.")
  fn = diva_jax.projected_jacobian_features(
      backbone.apply_fn, int(config.jacobian_width), seed=config.seed,
      trainable=diva_jax.path_matches(config.linearize_params))
  tag = f"jac[{config.linearize_params}]w{config.jacobian_width}s{config.seed}"
  return dataclasses.replace(backbone, name=f"{backbone.name}-{tag}",
                             apply_fn=lambda params, x: fn(x, params),
                             feature_dim=int(config.jacobian_width))


def prepare_features(config, workdir: Workdir,
                     check: Optional[Callable[[np.ndarray], None]] = None):
  """Train and test FeatureSets of the configured dataset, backbone and linearisation.

  `check(train_labels)`, if given, validates what depends on the data (e.g. budgets against
  the pool size) after loading and before anything is written (config.json, the cache).

  config.linearize: 'last_layer' (frozen penultimate features: the paper's setting), or
  'last_layer+jacobian' (also linearise the parameters matching config.linearize_params:
  their projected Jacobian features are appended, each block standardised to the same
  mean squared norm, so the kernel is the sum of the two).
  """
  check_choice(config, "linearize", ("last_layer", "last_layer+jacobian"))
  cache_dir = config.cache_dir or workdir.file("cache")
  sets, blocks = {}, []
  for split, max_n in (("train", config.max_train), ("test", config.max_test)):
    images, labels, names = load_split(config, split, max_n)
    sets[split] = (labels, images, names)
  if check is not None:
    check(sets["train"][0])
  workdir.commit()  # valid: from here on, outputs (and the feature cache) are written
  backbone = make_backbone(config)
  nets = [backbone]
  if config.linearize == "last_layer+jacobian":
    nets.append(jacobian_backbone(config, backbone))
  for net in nets:
    raw = [embed(config, net, sets[split][1], dataset=config.dataset,
                 split=f"{split}{max_n or ''}", cache_dir=cache_dir, workdir=workdir)
           for split, max_n in (("train", config.max_train), ("test", config.max_test))]
    blocks.append(standardize(*raw))
  if len(blocks) == 1:
    tr, te = blocks[0]
  else:  # one bias column is enough
    tr = np.concatenate([blocks[0][0]] + [b[0][:, :-1] for b in blocks[1:]], 1)
    te = np.concatenate([blocks[0][1]] + [b[1][:, :-1] for b in blocks[1:]], 1)
  return (FeatureSet(tr, *sets["train"]), FeatureSet(te, *sets["test"]))


def detection_features(config, train: FeatureSet, workdir: Workdir) -> np.ndarray:
  """The features detection reads: `train.features`, or with config.detection_views the
  backbone's features averaged over each image and its four shifted copies
  (`diva_jax.data.augment`, shift config.view_shift of the image side), standardised like
  `prepare_features`' (each view cached as its own split). The refit and the test error stay
  on `train.features`. Last-layer features only (config.linearize = 'last_layer')."""
  if not config.detection_views:
    return train.features
  cache_dir = config.cache_dir or workdir.file("cache")
  backbone = make_backbone(config)
  split = f"train{config.max_train or ''}"
  h, w = train.images.shape[1:3]
  total = embed(config, backbone, train.images, dataset=config.dataset, split=split,
                cache_dir=cache_dir, workdir=workdir).astype(np.float64)
  offsets = augment.shift_offsets(h, w, float(config.view_shift))
  for dy, dx in offsets:
    total += embed(config, backbone, augment.shift_images(train.images, dy, dx),
                   dataset=config.dataset, split=f"{split}-shift{dy:+d}{dx:+d}",
                   cache_dir=cache_dir, workdir=workdir)
  return standardize((total / (1 + len(offsets))).astype(np.float32))[0]


def setting_workdir(workdir: str, wd: Workdir, config, c, dataset: str,
                    max_train: int) -> Workdir:
  """The sub-workdir of one (dataset, max_train) setting of a study, `c` its config (whose
  feature cache becomes config.cache_dir or the study's own cache)."""
  c.cache_dir = config.cache_dir or wd.file("cache")
  return Workdir(os.path.join(workdir, "settings", f"{dataset}_{max_train}"), c,
                 overwrite=True)


def noisy_labels(config, labels: np.ndarray, num_classes: int):
  """(noisy labels, flipped mask) for config.noise_type in {'uniform', 'pairwise', 'none'}."""
  rate = check_float(config, "noise_rate", low=0.0, high=1.0, high_open=True)
  check_choice(config, "noise_type", ("uniform", "pairwise", "none"))
  if config.noise_type == "none" or rate == 0.0:
    return labels.copy(), np.zeros(len(labels), bool)
  if config.noise_type == "uniform":
    res = data.uniform_label_noise(labels, num_classes, rate, config.seed)
  elif config.noise_type == "pairwise":
    res = data.class_conditional_label_noise(
        labels, data.pairwise_transition(num_classes, rate), config.seed)
  return res.labels, res.flipped


def choose_reg(config, targets, features) -> float:
  """config.reg if > 0, else (reg = 0.0) the minimiser of the exact LOO error."""
  reg = check_float(config, "reg", low=0.0)
  if reg > 0:
    return reg
  return float(diva_jax.select_reg(targets, features=features, loss=config.loss,
                                   temperature=config.temperature).reg)


def detection_multiplier(config):
  """config.detection_reg_multiplier if > 0, else (0.0) None: the library's rule
  (`diva_jax.curation.label_issues.auto_reg_multiplier`)."""
  mult = check_float(config, "detection_reg_multiplier", low=0.0)
  return mult if mult > 0 else None


def test_error(weights, targets, features, reg, test_features, test_labels) -> float:
  """Classification error on the test set of the ridge head fit with sample weights."""
  pred = diva_jax.ridge_predict(weights, targets, features=features, reg=reg,
                                test_features=test_features)
  return float(np.mean(np.argmax(np.asarray(pred), 1) != test_labels))


# Row-wise softmax(x / temperature) in float64 (LOO predictions -> class probabilities).
softmax = detect.loo_probabilities


def one_hot(labels, num_classes):
  return np.eye(num_classes, dtype=np.float32)[labels]


def cv_logistic_probs(features, labels, config) -> np.ndarray:
  """5-fold cross-validated logistic-regression class probabilities (cleanlab's usual
  recipe; config.logistic_max_iter / logistic_c), with one BLAS thread: lbfgs's many small
  products with OpenBLAS threads beside JAX's thread pool ran 10-60x slower here (36 s vs
  0.6 s on the runlocal job), so the baseline is timed at its best."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import cross_val_predict
  with single_blas_thread():
    return cross_val_predict(LogisticRegression(max_iter=config.logistic_max_iter,
                                                C=config.logistic_c),
                             features, labels, cv=5, method="predict_proba")


def single_blas_thread():
  """A context limiting NumPy/SciPy's BLAS to one thread (threadpoolctl, a scikit-learn
  dependency): for the baselines' many small products, where BLAS threads next to JAX's
  thread pool oversubscribe the cores."""
  from threadpoolctl import threadpool_limits
  return threadpool_limits(limits=1, user_api="blas")


class Timer:
  def __enter__(self):
    self.start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.start
