"""What every experiment run shares: the workdir (config check, resumable stages, atomic
outputs), the data and feature pipeline, ridge test errors, progress bars and process-0-only
writing for multi-host runs.

Resumability: each expensive step is a *stage* whose result is saved atomically under
`<workdir>/stages/<name>.npz` (arrays) or `.json` (metrics). A rerun with the same workdir
and config loads finished stages and computes only the rest; every stage is deterministic
(seeded), so a run killed at any point and restarted ends with the same results as an
uninterrupted one. Feature extraction has its own validated cache (`diva_jax.features`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from diva_jax import io_utils

__all__ = [
    "Workdir",
    "ConfigMismatchError",
    "is_main_process",
    "progress_bar",
    "FeatureSet",
    "make_backbone",
    "load_split",
    "embed",
    "prepare_features",
    "choose_reg",
    "test_error",
    "noisy_labels",
]


def is_main_process() -> bool:
  return jax.process_index() == 0


class ConfigMismatchError(ValueError):
  """The workdir holds results of a different config."""


def _jsonable(config) -> dict:
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return json.loads(json.dumps(d, sort_keys=True, default=str))


def _diff(a: Mapping, b: Mapping, prefix="") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: stored {va!r}, new {vb!r}")
  return out


class Workdir:
  """A run's directory: config.json, resumable stages and atomically written outputs.

  Only process 0 writes (multi-host runs compute everywhere, write once).
  """

  def __init__(self, path: str | os.PathLike, config, *, overwrite: bool = False):
    self.path = os.fspath(path)
    self.config = _jsonable(config)
    self.write = is_main_process()
    cfg_path = os.path.join(self.path, "config.json")
    if os.path.exists(cfg_path):
      try:
        with open(cfg_path) as f:
          stored = json.load(f)
      except (OSError, ValueError):
        stored = None  # unreadable: treated as a different config
      if stored != self.config:
        if not overwrite:
          diff = _diff(stored or {}, self.config) if stored is not None else ["unreadable"]
          raise ConfigMismatchError(
              f"workdir {self.path} holds a run with a different config ("
              + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "") + "). Use another "
              "--workdir, or pass --overwrite to discard the results stored there.")
        if self.write:
          for sub in ("stages",):
            shutil.rmtree(os.path.join(self.path, sub), ignore_errors=True)
    if self.write:
      os.makedirs(self.path, exist_ok=True)
      io_utils.atomic_write_json(cfg_path, self.config)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def _stage_path(self, name, ext):
    return os.path.join(self.path, "stages", f"{name}.{ext}")

  def stage_arrays(self, name: str, compute: Callable[[], Mapping[str, Any]]) -> dict:
    """Arrays from `<workdir>/stages/<name>.npz` if complete, else computed and saved."""
    path = self._stage_path(name, "npz")
    if os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as f:
          return {k: f[k] for k in f.files}
      except (OSError, ValueError, EOFError):
        pass  # corrupt: recompute (atomic writes make this rare)
    out = {k: np.asarray(v) for k, v in compute().items()}
    if self.write:
      io_utils.atomic_save_npz(path, out)
    return out

  def stage_json(self, name: str, compute: Callable[[], Any]) -> Any:
    """A JSON-able result from `<workdir>/stages/<name>.json` if complete, else computed."""
    path = self._stage_path(name, "json")
    if os.path.exists(path):
      try:
        with open(path) as f:
          return json.load(f)
      except (OSError, ValueError):
        pass
    out = json.loads(json.dumps(compute(), default=_to_builtin))
    if self.write:
      io_utils.atomic_write_json(path, out)
    return out

  def write_json(self, name: str, obj) -> None:
    if self.write:
      io_utils.atomic_write_json(self.file(name), json.loads(json.dumps(obj, default=_to_builtin)))

  def write_csv(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
    """Columns of equal length as a CSV with a header row."""
    if not self.write:
      return
    keys = list(columns)
    cols = [np.asarray(columns[k]) for k in keys]
    lines = [",".join(keys)]
    for row in zip(*cols):
      lines.append(",".join(_csv_cell(v) for v in row))
    io_utils.atomic_write_text(self.file(name), "\n".join(lines) + "\n")

  def savefig(self, name: str, fig) -> None:
    if not self.write:
      return
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    io_utils.atomic_write_bytes(self.file(name), buf.getvalue())


def _csv_cell(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return "1" if v else "0"
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.9g}"
  s = str(v)
  return f'"{s}"' if ("," in s or '"' in s) else s


def _to_builtin(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  raise TypeError(f"not JSON-serialisable: {type(o)}")


class progress_bar:
  """A minimal text progress bar on stderr (process 0, and only when it is a terminal or
  DIVA_PROGRESS=1). Call it as a `progress(done, total)` callback."""

  def __init__(self, label: str):
    self.label = label
    self.enabled = is_main_process() and (sys.stderr.isatty() or
                                          os.environ.get("DIVA_PROGRESS") == "1")
    self.start = time.perf_counter()

  def __call__(self, done: int, total: int, *unused) -> None:
    if not self.enabled:
      return
    frac = done / max(total, 1)
    bar = "#" * int(30 * frac)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{self.label:<28s} [{bar:<30s}] {done}/{total} "
                     f"{time.perf_counter() - self.start:6.1f}s{end}")
    sys.stderr.flush()


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
  from diva_jax import models
  if config.backbone == "efficientnet_lite0":
    return models.efficientnet_lite0(pretrained=True, input_size=config.image_size)
  if config.backbone == "pixels":
    return None
  raise ValueError(f"unknown backbone {config.backbone!r}: expected 'efficientnet_lite0' or "
                   "'pixels'.")


def load_split(config, split: str, max_examples: int):
  """(images, labels, class_names) of a split, the first `max_examples` (0 = all)."""
  from diva_jax import data
  ds = data.load(config.dataset, split, data_dir=config.data_dir or None)
  images, labels = ds.images, ds.labels
  if max_examples and max_examples < len(labels):
    images, labels = images[:max_examples], labels[:max_examples]
  if len(labels) == 0:
    raise ValueError(f"dataset {config.dataset!r} split {split!r} is empty.")
  if len(np.unique(labels)) < 2:
    raise ValueError(f"dataset {config.dataset!r} split {split!r} has a single class "
                     f"({int(labels[0])}): classification needs at least two.")
  return images, labels, ds.class_names


def embed(config, backbone, images, *, dataset: str, split: str, cache_dir: str):
  """[n, d] float32 raw features of uint8 images (cached on disk for real backbones)."""
  from diva_jax import features as feats
  if backbone is None:  # raw pixels
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    return x
  res = feats.cached_features(backbone, images, dataset=dataset, split=split,
                              cache_dir=cache_dir, batch_size=config.batch_size,
                              progress=progress_bar(f"features {dataset}/{split}"))
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
  import dataclasses
  import diva_jax
  if backbone is None:
    raise ValueError("linearize='last_layer+jacobian' needs a network backbone, not 'pixels'.")
  fn = diva_jax.projected_jacobian_features(
      backbone.apply_fn, int(config.jacobian_width), seed=config.seed,
      trainable=diva_jax.path_matches(config.linearize_params))
  tag = f"jac[{config.linearize_params}]w{config.jacobian_width}s{config.seed}"
  return dataclasses.replace(backbone, name=f"{backbone.name}-{tag}",
                             apply_fn=lambda params, x: fn(x, params),
                             feature_dim=int(config.jacobian_width))


def prepare_features(config, workdir: Workdir):
  """Train and test FeatureSets of the configured dataset, backbone and linearisation.

  config.linearize: 'last_layer' (frozen penultimate features: the paper's setting), or
  'last_layer+jacobian' (also linearise the parameters matching config.linearize_params:
  their projected Jacobian features are appended, each block standardised to the same
  mean squared norm, so the kernel is the sum of the two).
  """
  if config.linearize not in ("last_layer", "last_layer+jacobian"):
    raise ValueError(f"linearize must be 'last_layer' or 'last_layer+jacobian', got "
                     f"{config.linearize!r}.")
  cache_dir = config.cache_dir or workdir.file("cache")
  backbone = make_backbone(config)
  nets = [backbone]
  if config.linearize == "last_layer+jacobian":
    nets.append(jacobian_backbone(config, backbone))
  sets, blocks = {}, []
  for split, max_n in (("train", config.max_train), ("test", config.max_test)):
    images, labels, names = load_split(config, split, max_n)
    sets[split] = (labels, images, names)
  for net in nets:
    raw = [embed(config, net, sets[split][1], dataset=config.dataset,
                 split=f"{split}{max_n or ''}", cache_dir=cache_dir)
           for split, max_n in (("train", config.max_train), ("test", config.max_test))]
    blocks.append(standardize(*raw))
  if len(blocks) == 1:
    tr, te = blocks[0]
  else:  # one bias column is enough
    tr = np.concatenate([blocks[0][0]] + [b[0][:, :-1] for b in blocks[1:]], 1)
    te = np.concatenate([blocks[0][1]] + [b[1][:, :-1] for b in blocks[1:]], 1)
  return (FeatureSet(tr, *sets["train"]), FeatureSet(te, *sets["test"]))


def noisy_labels(config, labels: np.ndarray, num_classes: int):
  """(noisy labels, flipped mask) for config.noise_type in {'uniform', 'pairwise', 'none'}."""
  from diva_jax import data
  rate = float(config.noise_rate)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"noise_rate must be in [0, 1), got {rate}.")
  if config.noise_type == "none" or rate == 0.0:
    return labels.copy(), np.zeros(len(labels), bool)
  if config.noise_type == "uniform":
    res = data.uniform_label_noise(labels, num_classes, rate, config.seed)
  elif config.noise_type == "pairwise":
    res = data.class_conditional_label_noise(
        labels, data.pairwise_transition(num_classes, rate), config.seed)
  else:
    raise ValueError(f"noise_type must be 'uniform', 'pairwise' or 'none', got "
                     f"{config.noise_type!r}.")
  return res.labels, res.flipped


def choose_reg(config, targets, features) -> float:
  """config.reg if > 0, else (reg = 'auto' or 0) the minimiser of the exact LOO error."""
  import diva_jax
  reg = config.reg
  if isinstance(reg, str):
    if reg != "auto":
      raise ValueError(f"reg must be a number > 0 or 'auto', got {reg!r}.")
    reg = 0.0
  if reg and reg > 0:
    return float(reg)
  return float(diva_jax.select_reg(targets, features=features, loss=config.loss,
                                   temperature=config.temperature).reg)


def test_error(weights, targets, features, reg, test_features, test_labels) -> float:
  """Classification error on the test set of the ridge head fit with sample weights."""
  import diva_jax
  pred = diva_jax.ridge_predict(weights, targets, features=features, reg=reg,
                                test_features=test_features)
  return float(np.mean(np.argmax(np.asarray(pred), 1) != test_labels))


def one_hot(labels, num_classes):
  return np.eye(num_classes, dtype=np.float32)[labels]


class Timer:
  def __enter__(self):
    self.start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.start
