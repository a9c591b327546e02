"""What every experiment run shares: the workdir (config check, resumable stages, atomic
outputs), the data and feature pipeline, ridge test errors, progress bars and process-0-only
writing for multi-host runs.

Resumability: each expensive step is a *stage* whose result is saved atomically under
`<workdir>/stages/<name>.npz` (arrays) or `.json` (metrics). A rerun with the same workdir
and config loads finished stages and computes only the rest; every stage is deterministic
(seeded), so a run killed at any point and restarted ends with the same results as an
uninterrupted one. Feature extraction has its own validated cache (`diva_jax.features`).

Nothing is written before the config is validated (`check_*` helpers, `ConfigError`) and the
data are loaded: `Workdir` writes `config.json` (and, with `overwrite`, deletes the outputs
of the run stored there before) only at its first write.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from diva_jax import io_utils
from diva_jax.runs.errors import ConfigError

__all__ = [
    "Workdir",
    "ConfigError",
    "ConfigMismatchError",
    "check_int",
    "check_float",
    "check_choice",
    "check_common",
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


class ConfigMismatchError(ConfigError):
  """The workdir holds results of a different config."""


# ----------------------------------------------------------------------------------------
# Config validation: everything is checked before anything is written.
# ----------------------------------------------------------------------------------------


def _as_int(value) -> Optional[int]:
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
    return int(value)
  return None


def check_int(config, name: str, minimum: Optional[int] = None) -> int:
  """config[name] as an int (integer-valued, >= minimum), else ConfigError naming the field."""
  value = config[name]
  out = _as_int(value)
  if out is None or (minimum is not None and out < minimum):
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ConfigError(f"{name} must be an integer{bound}, got {value!r}.")
  return out


def check_ints(config, name: str, minimum: Optional[int] = None, *,
               nonempty: bool = False) -> list[int]:
  """config[name], a sequence of integers >= minimum."""
  values = config[name]
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise ConfigError(f"{name} must be a tuple of integers, got {values!r}.")
  out = [_as_int(v) for v in values]
  if (nonempty and not out) or any(v is None or (minimum is not None and v < minimum)
                                   for v in out):
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ConfigError(f"{name} must be a{' non-empty' if nonempty else ''} tuple of "
                      f"integers{bound}, got {tuple(values)!r}.")
  return out


def check_float(config, name: str, *, low: Optional[float] = None, low_open: bool = False,
                high: Optional[float] = None, high_open: bool = False,
                value=None) -> float:
  """config[name] as a finite float in the given interval, else ConfigError naming it."""
  value = config[name] if value is None else value
  ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  v = float(value) if ok else math.nan
  ok = ok and math.isfinite(v)
  if ok and low is not None:
    ok = v > low if low_open else v >= low
  if ok and high is not None:
    ok = v < high if high_open else v <= high
  if not ok:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    where = (f" in {lo}, {hi}" if lo and hi else f" {'>' if low_open else '>='} {low:g}" if lo
             else f" {'<' if high_open else '<='} {high:g}" if hi else "")
    raise ConfigError(f"{name} must be a finite number{where}, got {value!r}.")
  return v


def check_choice(config, name: str, choices: Iterable[str], value=None) -> str:
  value = config[name] if value is None else value
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
  return value


def check_dataset(name) -> None:
  """A dataset name `diva_jax.data.load` knows (this package's, or the TFDS catalog's)."""
  from diva_jax import data
  from diva_jax.data import loading
  if not isinstance(name, str) or not name:
    raise ConfigError(f"dataset must be a dataset name, got {name!r}.")
  base = name.split(":")[0].split("/")[0]
  if base in data.known_datasets() or base in loading._catalog():  # pylint: disable=protected-access
    return
  raise ConfigError(f"unknown dataset {name!r}: this package provides "
                    f"{list(data.known_datasets())}; any other name must be in the TFDS catalog "
                    "(e.g. 'mnist', 'cifar10').")


def check_common(config) -> None:
  """The fields the binaries share (those present in `config`)."""
  import diva_jax
  has = lambda k: k in config
  if has("dataset") and not (has("core_npz") and config.core_npz):
    check_dataset(config.dataset)
  for name, minimum in (("max_train", 0), ("max_test", 0), ("image_size", 8),
                        ("batch_size", 1), ("seed", 0), ("jacobian_width", 1)):
    if has(name):
      check_int(config, name, minimum)
  if has("backbone"):
    check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  if has("linearize"):
    check_choice(config, "linearize", ("last_layer", "last_layer+jacobian"))
    if config.linearize == "last_layer+jacobian" and config.backbone == "pixels":
      raise ConfigError("linearize='last_layer+jacobian' needs a network backbone, not "
                        "'pixels'.")
  if has("loss"):
    check_choice(config, "loss", diva_jax.LOSSES)
  if has("temperature"):
    check_float(config, "temperature", low=0.0, low_open=True)
  if has("reg"):
    if isinstance(config.reg, str):
      raise ConfigError(f"reg must be a number: > 0 for a given reg, 0.0 to choose it by "
                        f"exact LOO; got {config.reg!r}.")
    check_float(config, "reg", low=0.0)
  for name in ("detection_reg_multiplier", "derivative_reg_multiplier"):
    if has(name):
      check_float(config, name, low=0.0, low_open=True)
  for name in ("data_dir", "cache_dir"):
    if has(name) and not isinstance(config[name], str):
      raise ConfigError(f"{name} must be a string path ('' = default), got {config[name]!r}.")


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


# Outputs of a run, deleted by `overwrite` (the feature cache is validated by its key, so it
# stays): stages/, config.json and every top-level .json, .csv and .png.
_OUTPUT_SUFFIXES = (".json", ".csv", ".png")


class Workdir:
  """A run's directory: config.json, resumable stages and atomically written outputs.

  The constructor checks the stored config (ConfigMismatchError) but writes nothing; the
  first write (a stage, an output, or `commit()` before a feature cache is filled) creates
  the directory, deletes the old run's outputs if `overwrite` discards a different config,
  and writes config.json. Only process 0 writes (multi-host runs compute everywhere, write
  once).
  """

  def __init__(self, path: str | os.PathLike, config, *, overwrite: bool = False):
    self.path = os.fspath(path) if path is not None else ""
    if not self.path:
      raise ConfigError("--workdir must name a directory, got an empty path.")
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"workdir {self.path} exists and is not a directory.")
    parent = os.path.dirname(os.path.abspath(self.path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      raise ConfigError(f"cannot create workdir {self.path}: {parent} is not a directory.")
    self.config = _jsonable(config)
    self.write = is_main_process()
    self._committed = False
    self._discard = False
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
        self._discard = True

  def commit(self) -> None:
    """Creates the workdir (deleting a discarded run's outputs) and writes config.json."""
    if self._committed:
      return
    self._committed = True
    if not self.write:
      return
    try:
      os.makedirs(self.path, exist_ok=True)
    except OSError as e:
      raise ConfigError(f"cannot create workdir {self.path}: {e.strerror or e}.") from e
    if self._discard:
      logging.info("--overwrite: deleting the outputs of the other run in %s", self.path)
      remove_outputs(self.path)
    io_utils.atomic_write_json(os.path.join(self.path, "config.json"), self.config)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def _stage_path(self, name, ext):
    return os.path.join(self.path, "stages", f"{name}.{ext}")

  def stage_arrays(self, name: str, compute: Callable[[], Mapping[str, Any]]) -> dict:
    """Arrays from `<workdir>/stages/<name>.npz` if complete, else computed and saved."""
    self.commit()
    path = self._stage_path(name, "npz")
    if os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as f:
          out = {k: f[k] for k in f.files}
        logging.info("stage %s: loaded from %s", name, path)
        return out
      except (OSError, ValueError, EOFError):
        pass  # corrupt: recompute (atomic writes make this rare)
    start = time.perf_counter()
    out = {k: np.asarray(v) for k, v in compute().items()}
    if self.write:
      io_utils.atomic_save_npz(path, out)
    logging.info("stage %s: computed in %.2fs", name, time.perf_counter() - start)
    return out

  def stage_json(self, name: str, compute: Callable[[], Any]) -> Any:
    """A JSON-able result from `<workdir>/stages/<name>.json` if complete, else computed."""
    self.commit()
    path = self._stage_path(name, "json")
    if os.path.exists(path):
      try:
        with open(path) as f:
          out = json.load(f)
        logging.info("stage %s: loaded from %s", name, path)
        return out
      except (OSError, ValueError):
        pass
    start = time.perf_counter()
    out = to_json(compute())
    if self.write:
      io_utils.atomic_write_json(path, out)
    logging.info("stage %s: computed in %.2fs", name, time.perf_counter() - start)
    return out

  def write_json(self, name: str, obj) -> None:
    self.commit()
    if self.write:
      io_utils.atomic_write_json(self.file(name), to_json(obj))

  def write_csv(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
    """Columns of equal length as a CSV with a header row."""
    self.commit()
    if not self.write:
      return
    keys = list(columns)
    cols = [np.asarray(columns[k]) for k in keys]
    lines = [",".join(keys)]
    for row in zip(*cols):
      lines.append(",".join(_csv_cell(v) for v in row))
    io_utils.atomic_write_text(self.file(name), "\n".join(lines) + "\n")

  def savefig(self, name: str, fig) -> None:
    self.commit()
    if self.write:
      import io
      buf = io.BytesIO()
      fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
      io_utils.atomic_write_bytes(self.file(name), buf.getvalue())
    import matplotlib.pyplot as plt
    plt.close(fig)


def remove_outputs(path: str) -> None:
  """Deletes a run's outputs in `path`: stages/ and every top-level .json/.csv/.png file
  (config.json, metrics.json, per_sample.csv, plots, leftover temporary files of those)."""
  shutil.rmtree(os.path.join(path, "stages"), ignore_errors=True)
  for entry in os.scandir(path):
    name = entry.name[:-4] if entry.name.endswith(".tmp") else entry.name
    if entry.is_file(follow_symlinks=False) and name.endswith(_OUTPUT_SUFFIXES):
      try:
        os.remove(entry.path)
      except FileNotFoundError:
        pass


def to_json(obj) -> Any:
  """`obj` as plain JSON values (NumPy scalars and arrays converted; NaN/inf -> None)."""
  return io_utils.finite_json(json.loads(json.dumps(obj, default=_to_builtin)))


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
  from diva_jax import models
  if config.backbone == "efficientnet_lite0":
    return models.efficientnet_lite0(pretrained=True, input_size=config.image_size)
  if config.backbone == "pixels":
    return None
  raise ConfigError(f"unknown backbone {config.backbone!r}: expected 'efficientnet_lite0' or "
                    "'pixels'.")


def load_split(config, split: str, max_examples: int):
  """(images, labels, class_names) of a split, the first `max_examples` (0 = all)."""
  from diva_jax import data
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
  import diva_jax
  reg = check_float(config, "reg", low=0.0)
  if reg > 0:
    return reg
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
