"""Curate your own dataset: label issues ranked by the dataset derivative, cleaned labels and a
browsable report, from an image folder, a CSV of image paths, precomputed embeddings or a TFDS
name (`config.source`, recognised by what it is; `diva_jax.data.user_data`).

Steps (each a resumable stage of the workdir):
  1. load the samples (bad files are skipped and listed, bad sources refused before anything is
     written) and embed images with the configured backbone (feature cache: reruns are instant);
  2. standardise the features, choose reg by exact LOO (or config.reg), take the dataset
     derivative at weight 1 and reg x config.detection_reg_multiplier (0.0: the library's rule,
     `auto_reg_multiplier`), and the exact LOO class probabilities at the LOO-optimal reg;
  3. write the outputs.
Outputs in the workdir:
  label_issues.csv   every sample, most harmful first: id, path, given_label, suggested_label
                     (the class of its exact LOO prediction), derivative, loo_prob_given,
                     flagged (threshold 'auto': the estimate_num_issues most harmful with
                     derivative > eps; 'sign': every derivative > eps); labels by the
                     source's class names;
  cleaned_labels.csv id, path, label: the flagged samples removed, or relabelled to the
                     suggestion with config.relabel; nothing is removed on flags that mark
                     noise (`detect.signal_check`): with features that carry no signal every
                     sample is kept, and a class flagged whole or not separated by the
                     features keeps its given labels (each said in a warning);
  label_issues.npy, label_quality_scores.npy   cleanlab-compatible: the boolean issue mask and
                     per-sample label quality (the LOO probability of the given label), in the
                     source's sample order;
  report.html        one self-contained file: summary, histogram, per-class table, the most
                     harmful samples with given and suggested labels;
  metrics.json       the summary, timings, skipped files and warnings (also printed, and at
                     the top of the report); with a planted-noise list (config.planted, or
                     <source>.planted_noise.json from export_image_folder) the flags' F1,
                     precision, recall and the derivative's AUROC against it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np

from diva_jax.curation import detect as detection
from diva_jax import io_utils
from diva_jax.curation import label_issues
from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax import models
from diva_jax.data import user_data
from diva_jax.data import user_tables
from diva_jax.app import report
import importlib
import importlib.util
import ml_collections

SOURCE_KINDS = ("folder", "csv", "npz", "npy", "tfds")


def _looks_like_path(source: str) -> bool:
  """A source that can only be a path (a TFDS name is never one of these): absolute, from
  home or the working directory, a file suffix we read, or under an existing folder."""
  src = os.path.expanduser(source.strip())
  if src.startswith(("/", "./", "../", ".\\", "..\\")) or os.path.isabs(src):
    return True
  if os.path.splitext(src)[1].lower() in (".csv", ".npz", ".npy", ".parquet", ".pq"):
    return True
  parent = os.path.dirname(src)
  return bool(parent) and os.path.isdir(parent)


def validate(config) -> None:
  """Every config value, before anything is read or written (ConfigError)."""
  if not isinstance(config.source, str) or not config.source.strip():
    raise ConfigError("source must name an image folder, a .csv of path,label rows, a table "
                      "(.csv or .parquet with label_column=), a .npz or .npy of embeddings, "
                      "or a TFDS dataset; got an empty value.")
  if _looks_like_path(config.source) and not os.path.exists(
      os.path.expanduser(config.source)):
    raise ConfigError(f"source {config.source!r}: no such file or folder.")
  common.check_choice(config, "backbone", ("efficientnet_lite0", "pixels", "flax"))
  if config.backbone == "flax":
    if ":" not in config.flax_module:
      raise ConfigError("backbone='flax' needs flax_module = 'package.module:Name' or "
                        f"'path/to/file.py:Name' (a flax module class or factory), got "
                        f"{config.flax_module!r}.")
    if not os.path.isdir(os.path.expanduser(config.flax_checkpoint)):
      raise ConfigError("backbone='flax' needs flax_checkpoint = an orbax checkpoint directory "
                        f"of the module's variables, got {config.flax_checkpoint!r}.")
  for key in ("label_column", "id_column"):
    if not isinstance(config[key], str):
      raise ConfigError(f"{key} must be a column name string ('' = none), got {config[key]!r}.")
  suffix = os.path.splitext(config.source.strip())[1].lower()
  if suffix in (".parquet", ".pq") and not config.label_column:
    raise ConfigError(f"source {config.source!r} is a Parquet table: name its label column "
                      "with --config.label_column=.")
  if config.label_column and suffix not in (".csv", ".parquet", ".pq"):
    raise ConfigError(f"label_column={config.label_column!r} names a table column, but source "
                      f"{config.source!r} is not a .csv or .parquet table.")
  if config.id_column and not config.label_column:
    raise ConfigError("id_column names a column of a table source: set label_column too.")
  common.check_int(config, "image_size", 8)
  common.check_int(config, "batch_size", 1)
  common.check_int(config, "max_images", 0)
  common.check_int(config, "report_grid", 1)
  common.check_int(config, "seed", 0)
  common.check_choice(config, "loss", ("mse", "ce"))
  common.check_float(config, "temperature", low=0.0, low_open=True)
  common.check_float(config, "reg", low=0.0)
  common.detection_multiplier(config)  # 0.0: the library's rule
  common.check_choice(config, "outer", ("weighted", "mean"))
  common.check_float(config, "eps")
  common.check_choice(config, "threshold", ("auto", "sign"))
  if not isinstance(config.relabel, bool):
    raise ConfigError(f"relabel must be True or False, got {config.relabel!r}.")
  if not isinstance(config.planted, str):
    raise ConfigError(f"planted must be a path string ('' = <source>.planted_noise.json when "
                      f"it exists), got {config.planted!r}.")
  if config.planted and not os.path.isfile(os.path.expanduser(config.planted)):
    raise ConfigError(f"planted {config.planted!r}: no such file.")
  src = os.path.expanduser(config.source)
  if not config.label_column and user_data.source_kind(src) == "tfds":
    if os.path.exists(src):
      raise ConfigError(f"source {config.source!r} is a file curate does not read: {_KINDS}.")
    _check_tfds_source(config)


_KINDS = ("pass an image folder (one subfolder per class), a .csv of path,label[,id] rows, a "
          "table (.csv or .parquet, with label_column=), a .npz or .npy of embeddings, or a "
          "TFDS dataset name")


def _check_tfds_source(config) -> None:
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
                      f"{_KINDS}. ({e})") from None
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


class _Samples:
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


def load_source(config) -> _Samples:
  """The samples of config.source; a bad source raises ConfigError (nothing written yet)."""
  src = os.path.expanduser(config.source)
  kind = user_data.source_kind(src)
  try:
    if config.label_column:  # a table (validate: .csv or .parquet)
      r = user_tables.load_table(src, label_column=config.label_column,
                                 id_column=config.id_column, max_rows=config.max_images)
      return _Samples(labels=r.labels, class_names=r.class_names, ids=r.ids,
                      paths=[""] * len(r.ids), features=r.features, warnings=r.warnings,
                      records=r.records)
    if kind in ("folder", "csv"):
      fn = user_data.load_image_folder if kind == "folder" else user_data.load_image_csv
      r = fn(src, size=config.image_size, max_images=config.max_images)
      return _Samples(labels=r.labels, class_names=r.class_names, ids=r.ids, paths=r.paths,
                      images=r.images, skipped=r.skipped, warnings=r.warnings)
    if kind in ("npz", "npy"):
      r = user_data.load_embeddings(src, labels_path=config.labels_path)
      n = len(r.labels)
      keep = slice(None) if not config.max_images else slice(0, config.max_images)
      return _Samples(labels=r.labels[keep], class_names=r.class_names, ids=r.ids[keep],
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
  return _Samples(labels=labels, class_names=[str(c) for c in names], ids=ids,
                  paths=[""] * len(ids), images=np.asarray(images))


def _import_object(spec: str):
  """'package.module:Name' or 'path/to/file.py:Name' -> the object."""
  where, _, name = spec.rpartition(":")
  if where.endswith(".py"):
    module_spec = importlib.util.spec_from_file_location(
        f"_diva_user_{hashlib.sha256(where.encode()).hexdigest()[:8]}",
        os.path.expanduser(where))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  else:
    module = importlib.import_module(where)
  try:
    return getattr(module, name)
  except AttributeError as e:
    raise ConfigError(f"flax_module {spec!r}: {where} has no {name!r}.") from e


def make_backbone(config):
  """The configured backbone; 'flax': a user's flax module (class or factory, called with no
  arguments) with variables restored from an orbax checkpoint (`models.from_flax`)."""
  if config.backbone != "flax":
    return common.make_backbone(config)
  import orbax.checkpoint as ocp
  try:
    module = _import_object(config.flax_module)()
  except (ImportError, OSError, SyntaxError) as e:
    raise ConfigError(f"flax_module {config.flax_module!r} cannot be imported: {e}") from e
  variables = ocp.PyTreeCheckpointer().restore(
      os.path.abspath(os.path.expanduser(config.flax_checkpoint)))
  size = (config.image_size, config.image_size)
  return models.from_flax(module, variables, name=f"flax-{config.flax_module}",
                          input_size=size, method=config.flax_method or None)


def _tfds_config(config):
  return ml_collections.ConfigDict({"dataset": config.source, "data_dir": config.data_dir})


def _check_classes(s: _Samples) -> None:
  present = np.unique(s.labels)
  if len(present) < 2:
    raise ConfigError(f"source has {len(present)} class(es) with samples: finding label "
                      "issues needs at least two.")
  if len(s.labels) < 3:
    raise ConfigError(f"source has {len(s.labels)} samples: leave-one-out needs at least 3.")


def _planted_path(config) -> str:
  """The planted-noise list to score against: config.planted, else the one
  export_image_folder writes beside a folder, else ''."""
  if config.planted:
    return os.path.expanduser(config.planted)
  auto = os.path.expanduser(config.source).rstrip("/") + ".planted_noise.json"
  return auto if os.path.isfile(auto) else ""


def planted_scores(path, samples, flagged, deriv) -> dict:
  """F1, precision, recall of the flags and AUROC of the derivative against the planted
  label errors listed in `path` (JSON {"flipped": [...]}, each a sample's path relative to the
  source, as export_image_folder writes them, or its id)."""
  try:
    with open(path) as f:
      listed = json.load(f)["flipped"]
    listed = [str(v) for v in listed]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"planted {path!r}: expected a JSON object with a 'flipped' list of "
                      f"sample paths or ids ({type(e).__name__}: {e}).") from None
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
         "auroc": (detection.auroc(np.asarray(deriv, np.float64), truth)
                   if 0 < truth.sum() < truth.size else float("nan"))}
  return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _warn(message: str) -> None:
  """One `warning: ...` line on stderr (process 0 only)."""
  if common.is_main_process():
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _write_csv(workdir, name, header, rows) -> None:
  """A CSV (RFC 4180 quoting, UTF-8: paths and class names may hold commas and any script)."""
  workdir.commit()
  if not workdir.write:
    return
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows(rows)
  io_utils.atomic_write_text(workdir.file(name), buf.getvalue())


def _save_npy(workdir, name, arr) -> None:
  if workdir.write:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    io_utils.atomic_write_bytes(workdir.file(name), buf.getvalue())


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs the curation; returns the summary (also in <workdir>/metrics.json)."""
  validate(config)
  # relabel, threshold and the report's size change only the outputs written from the
  # scores: a rerun that changes them reuses the scores without --overwrite.
  wd = common.Workdir(workdir, config, overwrite=overwrite,
                      output_keys=("relabel", "threshold", "report_grid"))
  timings = {}
  start = time.perf_counter()
  samples = load_source(config)
  _check_classes(samples)
  timings["load_seconds"] = time.perf_counter() - start
  wd.commit()  # valid: from here on, outputs (and the feature cache) are written
  for path, reason in samples.skipped:
    _warn(f"skipped {path}: {reason}")
  for w in samples.warnings:
    _warn(w)

  start = time.perf_counter()
  if samples.features is not None:
    raw = np.asarray(samples.features, np.float32)
  else:
    backbone = make_backbone(config)
    tag = hashlib.sha256(os.path.abspath(config.source).encode()).hexdigest()[:12]
    raw = common.embed(config, backbone, samples.images, dataset="curate",
                       split=f"{tag}{config.max_images or ''}",
                       cache_dir=config.cache_dir or wd.file("cache"), workdir=wd)
  timings["embed_seconds"] = time.perf_counter() - start
  # A table arrives standardised per column with its bias column (user_tables); features
  # and embeddings are centred and scaled as a whole here.
  feats = raw if samples.records is not None else common.standardize(raw)[0]
  num_classes = len(samples.class_names)
  n = len(samples.labels)

  def score():
    t0 = time.perf_counter()
    bar = common.progress_bar("scoring")  # the default rule (diva_jax.find_label_issues)
    bar(0, 1)
    # Rows sharded over every device of every process (one device: the host path).
    with warnings.catch_warnings():  # curate states them itself, with the class names
      warnings.filterwarnings("ignore", message="find_label_issues: ", category=RuntimeWarning)
      issues = label_issues.find_label_issues(
          samples.labels, features=feats, num_classes=num_classes, loss=config.loss,
          temperature=config.temperature, reg=config.reg if config.reg > 0 else None,
          detection_reg_multiplier=common.detection_multiplier(config), threshold="sign",
          outer=config.outer, eps=float(config.eps), distributed=True)
    bar(1, 1)
    return {"derivative": issues.derivative, "loo_probs": issues.loo_probs,
            "suggested": issues.suggested_labels, "num_issues": np.int64(issues.num_issues),
            "reg": np.float64(issues.reg), "detection_reg": np.float64(issues.detection_reg),
            "seconds": np.float64(time.perf_counter() - t0)}

  # The stage is keyed by the data and the scoring settings only (a rerun after fixing
  # labels must not reuse scores; one that changes only the outputs, e.g. relabel or the
  # threshold, reuses them).
  fingerprint = hashlib.sha256(
      np.ascontiguousarray(samples.labels).tobytes() + np.ascontiguousarray(feats).tobytes()
      + repr((config.loss, float(config.temperature), float(config.reg),
              float(config.detection_reg_multiplier), float(config.eps), config.outer)).encode()
  ).hexdigest()[:16]
  scored = wd.stage_arrays(f"scores-{fingerprint}", score)
  timings["score_seconds"] = float(scored["seconds"])
  deriv, probs, suggested = scored["derivative"], scored["loo_probs"], scored["suggested"]
  prob_given = probs[np.arange(n), samples.labels]
  num_issues = int(scored["num_issues"])
  # The same threshold find_label_issues applies (threshold='auto' or 'sign').
  flagged = detection.detect_detrimental(
      deriv, float(config.eps), num_flagged=num_issues if config.threshold == "auto" else None)

  names = samples.class_names
  order = np.argsort(-deriv, kind="stable")
  check = detection.signal_check(samples.labels, suggested, flagged, num_classes)
  found = detection.signal_warnings(check, names)
  # Nothing is removed on flags that mark noise: with no signal, cleaned_labels.csv keeps
  # every sample; a class flagged whole or not separated by the features stays with its
  # given labels (label_issues.csv still shows every flag).
  whole = (list(np.unique(samples.labels)) if check.no_signal
           else sorted(set(check.flagged_whole) | set(check.unseparated)))
  keep_class = np.isin(samples.labels, whole)
  if whole and np.any(flagged & keep_class):
    found.append("cleaned_labels.csv keeps " + (
        "every sample (the features carry no signal)" if check.no_signal else
        f"the class(es) {', '.join(repr(names[j]) for j in whole)} with their given labels"))
  planted = _planted_path(config)
  scored_planted = planted_scores(planted, samples, flagged, deriv) if planted else None
  if scored_planted and scored_planted["unmatched"]:
    found.append(f"planted: {scored_planted['unmatched']} of the listed samples are not in "
                 "the source")
  for w in found:
    _warn(w)
  samples.warnings.extend(found)
  _write_csv(wd, "label_issues.csv",
             ["id", "path", "given_label", "suggested_label", "derivative", "loo_prob_given",
              "flagged"],
             [[samples.ids[i], samples.paths[i], names[samples.labels[i]], names[suggested[i]],
               f"{deriv[i]:.6g}", f"{prob_given[i]:.6g}", int(flagged[i])] for i in order])
  change = flagged & ~keep_class
  if config.relabel:
    cleaned = [[samples.ids[i], samples.paths[i],
                names[suggested[i] if change[i] else samples.labels[i]]] for i in range(n)]
  else:
    cleaned = [[samples.ids[i], samples.paths[i], names[samples.labels[i]]]
               for i in range(n) if not change[i]]
  _write_csv(wd, "cleaned_labels.csv", ["id", "path", "label"], cleaned)
  _save_npy(wd, "label_issues.npy", flagged)
  _save_npy(wd, "label_quality_scores.npy", prob_given)

  summary = {
      "source": config.source,
      "samples": n,
      "classes": num_classes,
      "feature_dim": int(feats.shape[1]),
      "threshold": config.threshold,
      "estimated_issues": num_issues,
      "flagged": int(flagged.sum()),
      "flagged_fraction": float(flagged.mean()),
      "classes_kept_whole": [names[j] for j in whole if np.any(flagged & (samples.labels == j))],
      "flagged_by_sign_rule": int(np.sum(deriv > float(config.eps))),
      "suggested_differs_from_given": int(np.sum(suggested != samples.labels)),
      "reg": float(scored["reg"]),
      "detection_reg": float(scored["detection_reg"]),
      "skipped_files": len(samples.skipped),
      **{k: round(v, 3) for k, v in timings.items()},
  }
  if scored_planted:
    summary.update({f"planted_{k}": v for k, v in scored_planted.items()})
  if wd.write:
    thumbs = samples.images if samples.images is not None else None
    report.write_report(
        wd.file("report.html"), title=f"Label issues: {config.source}", summary=summary,
        class_names=names, given=samples.labels, suggested=suggested, derivative=deriv,
        flagged=flagged, loo_prob_given=prob_given, ids=samples.ids, thumbnails=thumbs,
        records=samples.records,
        skipped=samples.skipped, warnings=samples.warnings, max_grid=int(config.report_grid))
  metrics = dict(summary, skipped=[{"path": p, "reason": r} for p, r in samples.skipped],
                 warnings=samples.warnings)
  wd.write_json("metrics.json", metrics)
  if common.is_main_process():
    _print_summary(summary, samples, names, order, deriv, suggested, flagged, wd)
  return metrics


def _print_summary(summary, samples, names, order, deriv, suggested, flagged, wd) -> None:
  print(f"== curate: {summary['source']} ({summary['samples']} samples, {summary['classes']} "
        f"classes, {summary['skipped_files']} files skipped)")
  print(f"flagged {summary['flagged']} ({100 * summary['flagged_fraction']:.1f}%; threshold "
        f"{summary['threshold']}: {summary['estimated_issues']} issues estimated, "
        f"{summary['flagged_by_sign_rule']} with derivative > eps); reg {summary['reg']:.4g} "
        f"(derivative at {summary['detection_reg']:.4g})"
        f"; embed {summary['embed_seconds']:.1f}s, score {summary['score_seconds']:.1f}s")
  if "planted_f1" in summary:
    print(f"against the {summary['planted_planted']} planted label errors "
          f"({summary['planted_file']}): F1 {summary['planted_f1']:.3f} (precision "
          f"{summary['planted_precision']:.3f}, recall {summary['planted_recall']:.3f}), "
          f"AUROC {summary['planted_auroc']:.3f}")
  print("most harmful:")
  for i in order[:5]:
    where = samples.paths[i] or samples.ids[i]
    print(f"  {where}: given {names[samples.labels[i]]}, suggested {names[suggested[i]]}, "
          f"derivative {deriv[i]:.3g}")
  print(f"outputs in {wd.path}: label_issues.csv, cleaned_labels.csv, label_issues.npy, "
        "label_quality_scores.npy, report.html, metrics.json")


def main() -> None:
  """The `diva-curate` command (and `python -m experiments.curate`): the packaged config
  (`diva_jax/app/curate_config.py`; `--config=:runlocal` picks its variants), the flags of
  every binary."""
  from diva_jax.app import cli
  from diva_jax.app import curate_config
  cli.define_and_run(curate_config.__file__, run)


if __name__ == "__main__":
  main()
