"""What linearising more of the backbone buys: last-layer features against features that
also linearise the network's last layers (the linearisation table in docs/studies.md).

For each dataset and each linearisation the features are computed once:

* ``last_layer``: the frozen penultimate features (the paper's setting);
* ``name=regex``: the same, concatenated with the randomly projected Jacobian of the
  backbone's features over the parameters whose path matches ``regex``
  (``diva_jax.projected_jacobian_features`` at a fixed projection seed and width, traced over
  the 1280 features), each block standardised to the same mean squared norm, exactly as
  ``common.prepare_features`` does for ``linearize='last_layer+jacobian'``: the kernel of the
  ridge head is the last-layer kernel plus the empirical NTK of that parameter subset.

Then, in memory, for each noise rate and seed: uniform label noise (`diva_jax.data`), reg by
exact LOO, the dataset derivative at reg x ``detection_reg_multiplier``, the automatic
threshold (``estimate_num_issues`` most harmful, as the outlier-rejection binary), detection F1
and AUROC against the noise mask, and the ridge test error before curation, after removing the
flagged samples and after removing exactly the noisy ones (reg re-chosen by exact LOO on the
kept samples). The cost column is the wall time of each linearisation's features (train +
test), measured when they were computed (stored with them, so a rerun reports the same).

Outputs: results.json (every run), summary.csv (mean and std per cell), metrics.json
(summary + costs) and table.md (the README table), written atomically.
"""

from __future__ import annotations

import re
import time

import numpy as np

from diva_jax.curation import label_issues
from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax import data
from diva_jax import io_utils
import diva_jax
import ml_collections

METRICS = ("test_error_before", "test_error_after", "test_error_oracle_removal",
           "detection_f1", "detection_auroc", "num_flagged")


def parse_linearizations(entries) -> list[tuple[str, str | None]]:
  """``('last_layer', 'name=regex', ...)`` -> ``[(name, regex or None)]``."""
  out = []
  for e in entries:
    e = str(e)
    if e == "last_layer":
      out.append((e, None))
      continue
    name, sep, regex = e.partition("=")
    if not sep or not name or not regex or name == "last_layer":
      raise ConfigError(f"linearizations entries are 'last_layer' or 'name=regex' (a regex "
                        f"over parameter paths such as params/head_conv/kernel), got {e!r}.")
    try:
      re.compile(regex)
    except re.error as err:
      raise ConfigError(f"linearizations: bad regex in {e!r}: {err}.") from err
    out.append((name, regex))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ConfigError(f"linearizations: names must be unique, got {names}.")
  return out


def validate(config, backbone=None) -> None:
  common.check_common(config)
  if not config.datasets:
    raise ConfigError("datasets must list at least one dataset.")
  for name in config.datasets:
    common.check_dataset(name)
  if not config.linearizations:
    raise ConfigError("linearizations must list at least one entry.")
  parse_linearizations(config.linearizations)
  if not config.noise_rates or not all(0 <= float(r) < 1 for r in config.noise_rates):
    raise ConfigError(f"noise_rates must be numbers in [0, 1), got {tuple(config.noise_rates)}.")
  common.check_int(config, "seeds", 1)
  common.check_int(config, "jacobian_seed", 0)
  common.check_int(config, "jacobian_batch_size", 1)
  if backbone is None:
    common.check_choice(config, "backbone", ("efficientnet_lite0",))


def _sub_config(config, dataset):
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset, c.noise_type = dataset, "uniform"
  return c


def _features(c, backbone, sets, lin, cache_dir, wd):
  """Raw train/test features of one linearisation (last-layer, or the projected Jacobian
  block alone) and their wall time."""
  name, regex = lin
  net = backbone
  if regex is not None:
    c = _copy(c)
    c.linearize_params, c.seed, c.batch_size = regex, int(c.jacobian_seed), int(
        c.jacobian_batch_size)
    net = common.jacobian_backbone(c, backbone)
  start = time.perf_counter()
  raw = {split: common.embed(c, net, sets[split][1], dataset=c.dataset,
                             split=f"{split}{max_n or ''}", cache_dir=cache_dir, workdir=wd)
         for split, max_n in (("train", c.max_train), ("test", c.max_test))}
  seconds = time.perf_counter() - start
  n_images = len(sets["train"][1]) + len(sets["test"][1])
  return {"train": raw["train"], "test": raw["test"], "seconds": seconds,
          "ms_per_image": 1000 * seconds / n_images}


def _copy(c):
  return ml_collections.ConfigDict(c.to_dict())


def _one_run(c, train_x, train_labels, test_x, test_labels, num_classes, rate, seed):
  if rate > 0:
    res = data.uniform_label_noise(train_labels, num_classes, rate, seed)
    noisy, flipped = res.labels, res.flipped
  else:
    noisy, flipped = train_labels.copy(), np.zeros(len(train_labels), bool)
  t = common.one_hot(noisy, num_classes)
  n = len(noisy)
  ones = np.ones(n, np.float32)
  issues = label_issues.find_label_issues(
      noisy, features=train_x, num_classes=num_classes, loss=c.loss,
      temperature=c.temperature, detection_reg_multiplier=common.detection_multiplier(c))
  reg, d, k, flagged = issues.reg, issues.derivative, issues.num_issues, issues.flagged

  def refit_error(keep):  # in %; None when fewer than 2 samples are kept
    err = label_issues.refit_test_error(keep, noisy, features=train_x, test_features=test_x,
                                        test_labels=test_labels,
                                        loss=c.loss, temperature=c.temperature,
                                        num_classes=num_classes)
    return None if np.isnan(err) else 100 * err

  row = {"noise_rate": float(rate), "seed": int(seed), "n": n, "noisy": int(flipped.sum()),
         "reg": reg, "num_issues_estimate": k, "num_flagged": int(flagged.sum()),
         "test_error_before": 100 * common.test_error(ones, t, train_x, reg, test_x,
                                                      test_labels),
         "test_error_after": refit_error(~flagged),
         "test_error_oracle_removal": refit_error(~flipped) if flipped.any() else None,
         "detection_f1": None, "detection_auroc": None}
  if flipped.any():
    row["detection_f1"] = float(diva_jax.detection_metrics(flagged - 0.5, flipped, 0.0).f1)
    row["detection_auroc"] = float(diva_jax.detection_metrics(d, flipped, 0.0).auroc)
  return row


def run(config, workdir: str, *, overwrite: bool = False, backbone=None) -> dict:
  """Runs the study; ``backbone`` (a ``diva_jax.models.Backbone``) replaces the configured
  one (tests)."""
  validate(config, backbone)
  lins = parse_linearizations(config.linearizations)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  rows, costs = [], []
  for dataset in config.datasets:
    c = _sub_config(config, dataset)
    sets = {}
    for split, max_n in (("train", c.max_train), ("test", c.max_test)):
      images, labels, names = common.load_split(c, split, max_n)
      sets[split] = (labels, images, names)
    wd.commit()
    if backbone is None:
      backbone = common.make_backbone(c)
    cache_dir = config.cache_dir or wd.file("cache")
    num_classes = len(sets["train"][2])
    blocks = {}
    for lin in lins:
      # The last-layer block is shared by every linearisation (computed once per dataset).
      for part in ([("last_layer", None)] if lin[1] is None else [lin]):
        if part[0] in blocks:
          continue
        st = wd.stage_arrays(f"features_{dataset}_{part[0]}",
                             lambda: _features(c, backbone, sets, part, cache_dir, wd))
        blocks[part[0]] = st
        costs.append({"dataset": dataset, "block": part[0], "regex": part[1],
                      "dim": int(st["train"].shape[1]), "seconds": float(st["seconds"]),
                      "ms_per_image": float(st["ms_per_image"])})
      last = common.standardize(blocks["last_layer"]["train"], blocks["last_layer"]["test"])
      if lin[1] is None:
        tr, te = last
      else:  # one bias column is enough (as common.prepare_features)
        jac = common.standardize(blocks[lin[0]]["train"], blocks[lin[0]]["test"])
        tr = np.concatenate([last[0], jac[0][:, :-1]], 1)
        te = np.concatenate([last[1], jac[1][:, :-1]], 1)
      seconds = float(blocks["last_layer"]["seconds"]) + (
          0.0 if lin[1] is None else float(blocks[lin[0]]["seconds"]))

      def runs():
        out = []
        for rate in config.noise_rates:
          for seed in range(int(config.seeds)):
            out.append(_one_run(c, tr, sets["train"][0], te, sets["test"][0], num_classes,
                                float(rate), seed))
        return out

      for r in wd.stage_json(f"runs_{dataset}_{lin[0]}", runs, collective=False):
        rows.append({"dataset": dataset, "linearization": lin[0], "feature_dim":
                     int(tr.shape[1]), "feature_seconds": seconds, **r})
  wd.write_json("results.json", rows)
  summary = summarize(rows, [n for n, _ in lins])
  wd.write_csv("summary.csv", {k: [s[k] for s in summary] for k in summary[0]})
  metrics = {"summary": summary, "feature_costs": costs,
             "settings": {"max_train": config.max_train, "max_test": config.max_test,
                          "seeds": config.seeds, "noise_rates": list(config.noise_rates),
                          "jacobian_width": config.jacobian_width,
                          "jacobian_seed": config.jacobian_seed,
                          "linearizations": list(config.linearizations)}}
  wd.write_json("metrics.json", metrics)
  table = markdown_table(summary)
  if common.is_main_process():
    io_utils.atomic_write_text(wd.file("table.md"), table)
    print(table)
  return {"runs": rows, "summary": summary, "feature_costs": costs}


def summarize(rows, lin_order) -> list[dict]:
  cells = {}
  for r in rows:
    cells.setdefault((r["dataset"], r["noise_rate"], r["linearization"]), []).append(r)
  keys = sorted(cells, key=lambda k: (list(dict.fromkeys(r["dataset"] for r in rows)).index(
      k[0]), k[1], lin_order.index(k[2])))
  out = []
  for key in keys:
    rs = cells[key]
    s = {"dataset": key[0], "noise_rate": key[1], "linearization": key[2],
         "n_train": rs[0]["n"], "feature_dim": rs[0]["feature_dim"],
         "feature_seconds": rs[0]["feature_seconds"], "seeds": len(rs)}
    for m in METRICS:
      vals = [r[m] for r in rs if r.get(m) is not None]
      s[f"{m}_mean"] = float(np.mean(vals)) if vals else float("nan")
      s[f"{m}_std"] = float(np.std(vals)) if vals else float("nan")
    out.append(s)
  return out


def markdown_table(summary) -> str:
  def pm(s, m, f="{:.2f}"):
    mean, std = s[f"{m}_mean"], s[f"{m}_std"]
    if np.isnan(mean):
      return "n/a"
    return f"{f.format(mean)} ± {f.format(std)}"
  lines = ["| dataset | noise | linearisation | dim | feature cost (s) | test err. before (%) "
           "| after removing flagged (%) | oracle removal (%) | flagged | F1 | AUROC |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in summary:
    lines.append(
        f"| {s['dataset']} | {s['noise_rate']:.0%} | {s['linearization']} | "
        f"{s['feature_dim']} | {s['feature_seconds']:.0f} | {pm(s, 'test_error_before')} | "
        f"{pm(s, 'test_error_after')} | {pm(s, 'test_error_oracle_removal')} | "
        f"{pm(s, 'num_flagged', '{:.0f}')} | {pm(s, 'detection_f1', '{:.3f}')} | "
        f"{pm(s, 'detection_auroc', '{:.3f}')} |")
  return "\n".join(lines) + "\n"
