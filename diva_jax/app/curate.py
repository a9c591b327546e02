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
import importlib
import importlib.util
import io
import os
import sys
import time
import warnings

import numpy as np

from diva_jax import io_utils
from diva_jax import models
from diva_jax.app import common
from diva_jax.app import curate_sources as sources
from diva_jax.app import report
from diva_jax.app.errors import ConfigError
from diva_jax.curation import detect
from diva_jax.curation import label_issues
from diva_jax.data import user_data

def validate(config) -> None:
  """Every config value, before anything is read or written (ConfigError)."""
  if not isinstance(config.source, str) or not config.source.strip():
    raise ConfigError("source must name an image folder, a .csv of path,label rows, a table "
                      "(.csv or .parquet with label_column=), a .npz or .npy of embeddings, "
                      "or a TFDS dataset; got an empty value.")
  if sources.looks_like_path(config.source) and not os.path.exists(
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
  planted = sources.planted_path(config)
  if planted:
    sources.read_planted(planted)
  src = os.path.expanduser(config.source)
  if not config.label_column and user_data.source_kind(src) == "tfds":
    if os.path.exists(src):
      raise ConfigError(f"source {config.source!r} is a file curate does not read: {sources.KINDS}.")
    sources.check_tfds_source(config)


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
  samples = sources.load_source(config)
  sources.check_classes(samples)
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
  flagged = detect.detect_detrimental(
      deriv, float(config.eps), num_flagged=num_issues if config.threshold == "auto" else None)

  names = samples.class_names
  order = np.argsort(-deriv, kind="stable")
  check = detect.signal_check(samples.labels, suggested, flagged, num_classes)
  found = detect.signal_warnings(check, names)
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
  planted = sources.planted_path(config)
  scored_planted = sources.planted_scores(planted, samples, flagged, deriv) if planted else None
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
      "flagged_by_sign_rule": int(np.sum(deriv > float(config.eps))),
      "suggested_differs_from_given": int(np.sum(suggested != samples.labels)),
      "reg": float(scored["reg"]),
      "detection_reg": float(scored["detection_reg"]),
      "skipped_files": len(samples.skipped),
      **{k: round(v, 3) for k, v in timings.items()},
  }
  kept_whole = [names[j] for j in whole if np.any(flagged & (samples.labels == j))]
  if kept_whole:
    summary["classes_kept_whole"] = kept_whole
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
