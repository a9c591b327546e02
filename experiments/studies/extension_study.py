"""Dataset extension and multi-source aggregation: the variants the paper leaves open, and a
source that should be rejected.

Features of the train and test split are extracted once (cached); every seed redraws the core,
the pool and the label noise. Two parts, both scored by the test error (%) of the ridge head
refit on the chosen training set with reg re-chosen by exact LOO on it:

1. Extension (`extension_variants`): a stratified core of `core_size` images, a pool of
   `pool_size` of the rest, `pool_noise_rate` of it mislabelled. DIVA Extend
   (`curation.extend`) in four variants: the LOO loss evaluated on the core only (the paper)
   or on core + picks; reg fixed (the core's exact-LOO reg x `derivative_reg_multiplier`) or
   re-chosen by exact LOO on core + picks each round (x the same multiplier). Three stopping
   rules per variant: each fixed budget; the variant's own rule (no pool sample with a
   negative derivative left); and the prefix with the lowest core LOO loss (mse, at the
   core's reg x multiplier: no test data). Against, in the same process: uniform picks of the
   same sizes, the whole pool, the core only, and detection on core + whole pool then adding
   the unflagged pool (DIVA's derivative with the automatic threshold; cleanlab's
   `find_label_issues` on the exact LOO probabilities).
2. Multi-source (`sources`): a `shots`-per-class core and three candidate sources of
   `source_size` images: `clean` (correct labels), `noisy` (`noisy_source_rate` of the labels
   flipped) and `shuffled` (a fixed pixel permutation of the images, correct labels: a shifted
   source; its images come from the end of the train split, outside core and pools). DIVA's
   pick (Extend, `source_budget`) and per-source counts; DIVA's source choice (add each source
   whose group derivative of the core LOO loss at source weight 0 is negative); against uniform
   picks of the same size, all sources, core + each source, and detection on core + all
   sources (DIVA automatic threshold, cleanlab on exact LOO) then refit on the unflagged.

Outputs: results.json (every seed), summary.md (mean +- std over seeds).
"""

from __future__ import annotations

import numpy as np

from diva_jax.curation import label_issues
from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax import data
from diva_jax import io_utils
from diva_jax.curation import steps as curation
import diva_jax

VARIANTS = ("core/fixed", "core/reselect", "core+picks/fixed", "core+picks/reselect")


def validate(config) -> list[int]:
  common.check_common(config)
  common.check_int(config, "seeds", 1)
  for name in ("core_size", "pool_size", "k", "shots", "source_size", "source_budget"):
    common.check_int(config, name, 1)
  common.check_float(config, "pool_noise_rate", low=0.0, high=1.0, high_open=True)
  common.check_float(config, "noisy_source_rate", low=0.0, high=1.0, high_open=True)
  common.check_float(config, "derivative_reg_multiplier", low=0.0, low_open=True)
  for v in config.extension_variants:
    common.check_choice(config, "extension_variants", VARIANTS, value=v)
  budgets = sorted(common.check_ints(config, "budgets", 1, nonempty=True))
  if budgets[-1] > config.pool_size:
    raise ConfigError(f"budgets must be at most pool_size = {config.pool_size}, got {budgets}.")
  if config.source_budget > 3 * config.source_size:
    raise ConfigError(f"source_budget must be at most the 3 x source_size = "
                      f"{3 * config.source_size} candidates, got {config.source_budget}.")
  return budgets


def _refit(config, targets, x, keep, test):
  return 100 * label_issues.refit_test_error(
      keep, targets.argmax(1), features=x, test_features=test.features,
      test_labels=test.labels,
      reg=config.reg if config.reg > 0 else None, loss=config.loss,
      temperature=config.temperature, num_classes=targets.shape[1])


def _detect(config, targets, x, labels, keep_mask):
  """Flags among keep_mask: (DIVA automatic threshold, cleanlab on exact LOO) [n] bool, with
  the outlier-rejection defaults (cross-entropy at T = 0.3, derivative at 10x reg)."""
  from cleanlab.filter import find_label_issues
  idx = np.flatnonzero(keep_mask)
  issues = label_issues.find_label_issues(labels[idx], features=x[idx],
                                          num_classes=targets.shape[1])
  diva, clean = np.zeros(len(targets), bool), np.zeros(len(targets), bool)
  diva[idx[issues.flagged]] = True
  clean[idx[find_label_issues(labels[idx], issues.loo_probs, n_jobs=1)]] = True
  return diva, clean


def _extension(config, budgets, train, test, seed):
  n_all = len(train.labels)
  rng = np.random.default_rng([seed, 11])
  split = common_core_pool(train.labels[: n_all - config.source_size], config.core_size, seed)
  pool = rng.permutation(split.pool)[: config.pool_size]
  idx = np.concatenate([split.core, pool])
  x, clean = train.features[idx], train.labels[idx]
  n, num_classes = len(idx), len(train.class_names)
  core = np.zeros(n, bool)
  core[: len(split.core)] = True
  labels = clean.copy()
  flip = np.flatnonzero(~core)[rng.uniform(size=int((~core).sum())) < config.pool_noise_rate]
  labels[flip] = (labels[flip] + rng.integers(1, num_classes, flip.size)) % num_classes
  noisy = np.zeros(n, bool)
  noisy[flip] = True
  t = common.one_hot(labels, num_classes)
  mult = float(config.derivative_reg_multiplier)
  core_reg = common.choose_reg(config, t[core], x[core]) * mult
  reselect = lambda mask: common.choose_reg(config, t[mask], x[mask]) * mult
  out = {"seed": seed, "core_only": _refit(config, t, x, core, test),
         "whole_pool": _refit(config, t, x, np.ones(n, bool), test),
         "pool_noisy": int(noisy.sum())}
  order = rng.permutation(np.flatnonzero(~core))
  out["uniform"] = {b: _refit(config, t, x, core | np.isin(np.arange(n), order[:b]), test)
                    for b in budgets}
  diva_flags, cl_flags = _detect(config, t, x, labels, np.ones(n, bool))
  out["diva_detect_then_whole_pool"] = _refit(config, t, x, core | ~diva_flags, test)
  out["cleanlab_detect_then_whole_pool"] = _refit(config, t, x, core | ~cl_flags, test)
  out["variants"] = {}
  for variant in config.extension_variants:
    evaluate_on, reg_rule = variant.split("/")
    res = curation.extend(core, t, features=x, reg=core_reg if reg_rule == "fixed" else reselect,
                          k=int(config.k), budget=budgets[-1], loss=config.loss,
                          temperature=config.temperature, evaluate_on=evaluate_on)
    sel = res.selected
    curve = {b: (_refit(config, t, x, core | np.isin(np.arange(n), sel[:b]), test)
                 if b <= len(sel) else None) for b in budgets}
    # Stopping by the core's LOO loss (mse at the core's reg x multiplier) over the prefixes.
    sizes = list(range(0, len(sel) + 1, int(config.k)))
    if sizes[-1] != len(sel):
      sizes.append(len(sel))
    core_loo = [float(diva_jax.loo_loss((core | np.isin(np.arange(n), sel[:m])).astype(
        np.float32), t, features=x, reg=core_reg, eval_mask=core)) for m in sizes]
    stop = sizes[int(np.argmin(core_loo))]
    keep_stop = core | np.isin(np.arange(n), sel[:stop])
    out["variants"][variant] = {
        "curve": curve, "picked_noisy": {b: float(noisy[sel[:b]].mean()) if b <= len(sel)
                                         else None for b in budgets},
        "stopped": res.stopped, "num_selected": int(len(sel)),
        "own_stop": _refit(config, t, x, core | np.isin(np.arange(n), sel), test),
        "loo_stop_size": int(stop), "loo_stop": _refit(config, t, x, keep_stop, test),
        "uniform_at_loo_stop": _refit(config, t, x, core | np.isin(np.arange(n), order[:stop]),
                                      test)}
  return out


def common_core_pool(labels, core_size, seed):
  return data.core_pool_split(labels, int(core_size), seed)


def _sources(config, train, shuffled_x, test, seed):
  n_all, num_classes = len(train.labels), len(train.class_names)
  m = int(config.source_size)
  rng = np.random.default_rng([seed, 13])
  first = train.labels[: n_all - m]
  split = common_core_pool(first, int(config.shots) * num_classes, seed + 100)
  pool = rng.permutation(split.pool)[: 2 * m]
  noisy_lab = train.labels[pool[m:]].copy()
  flip = rng.uniform(size=m) < config.noisy_source_rate
  noisy_lab[flip] = (noisy_lab[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
  x = np.concatenate([train.features[split.core], train.features[pool], shuffled_x])
  labels = np.concatenate([train.labels[split.core], train.labels[pool[:m]], noisy_lab,
                           train.labels[n_all - m:]])
  names = ("core", "clean", "noisy", "shuffled")
  src = np.concatenate([np.zeros(len(split.core), int), np.full(m, 1), np.full(m, 2),
                        np.full(m, 3)])
  n, core = len(labels), src == 0
  t = common.one_hot(labels, num_classes)
  reg = common.choose_reg(config, t[core], x[core]) * float(config.derivative_reg_multiplier)
  out = {"seed": seed, "core_only": _refit(config, t, x, core, test),
         "all_sources": _refit(config, t, x, np.ones(n, bool), test),
         "core_plus": {names[s]: _refit(config, t, x, core | (src == s), test) for s in (1, 2, 3)},
         "noisy_source_flipped": int(flip.sum())}
  res = curation.extend(core, t, features=x, reg=reg, k=int(config.k),
                        budget=int(config.source_budget), loss=config.loss,
                        temperature=config.temperature)
  sel = res.selected
  out["diva_pick"] = _refit(config, t, x, core | np.isin(np.arange(n), sel), test)
  out["diva_pick_per_source"] = {names[s]: int(np.sum(src[sel] == s)) for s in (1, 2, 3)}
  out["diva_pick_size"] = int(len(sel))
  uni = rng.choice(np.flatnonzero(~core), len(sel), replace=False)
  out["uniform_pick"] = _refit(config, t, x, core | np.isin(np.arange(n), uni), test)
  # Source-level choice: the group derivative of the core LOO loss at source weight 0.
  d = np.asarray(diva_jax.dataset_derivative(core.astype(np.float32), t, features=x, reg=reg,
                                             loss=config.loss, eval_mask=core,
                                             temperature=config.temperature))
  gd = curation.group_derivative(d, src, 4)
  chosen = [s for s in (1, 2, 3) if gd[s] < 0]
  out["source_derivative"] = {names[s]: float(gd[s]) for s in (1, 2, 3)}
  out["diva_sources"] = [names[s] for s in chosen]
  out["diva_source_choice"] = _refit(config, t, x, core | np.isin(src, chosen), test)
  diva_flags, cl_flags = _detect(config, t, x, labels, np.ones(n, bool))
  out["diva_detect_then_all"] = _refit(config, t, x, core | ~diva_flags, test)
  out["cleanlab_detect_then_all"] = _refit(config, t, x, core | ~cl_flags, test)
  out["diva_flags_per_source"] = {names[s]: int(np.sum(diva_flags & (src == s)))
                                  for s in range(4)}
  return out


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  budgets = validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)

  def check(train_labels):
    need = config.source_size + max(config.core_size + config.pool_size,
                                    config.shots * len(np.unique(train_labels))
                                    + 2 * config.source_size)
    if need > len(train_labels):
      raise ConfigError(f"core, pool and sources need {need} train images, the split has "
                        f"{len(train_labels)}.")

  train, test = common.prepare_features(config, wd, check=check)
  shuffled_x = None
  if config.sources:
    images = train.images[len(train.labels) - config.source_size:]
    perm = np.random.default_rng(12345).permutation(images.shape[1] * images.shape[2])
    flat = images.reshape(len(images), -1, images.shape[-1])[:, perm]
    shuffled = flat.reshape(images.shape)
    backbone = common.make_backbone(config)
    raw_train = common.embed(config, backbone, train.images, dataset=config.dataset,
                             split=f"train{config.max_train or ''}",
                             cache_dir=config.cache_dir or wd.file("cache"))
    raw_shuf = common.embed(config, backbone, shuffled, dataset=config.dataset,
                            split=f"shuffled{len(images)}",
                            cache_dir=config.cache_dir or wd.file("cache"))
    # Standardised like the train features (train mean and scale), bias column appended.
    mean = raw_train.mean(0, keepdims=True)
    scale = np.sqrt(np.mean(np.sum((raw_train - mean) ** 2, 1))) + 1e-12
    z = (raw_shuf - mean) / scale
    shuffled_x = np.concatenate([z, np.ones((len(z), 1), z.dtype)], 1).astype(np.float32)
  ext_rows, src_rows = [], []
  for seed in range(int(config.seeds)):
    if config.extension_variants:
      ext_rows.append(_extension(config, budgets, train, test, seed))
    if config.sources:
      src_rows.append(_sources(config, train, shuffled_x, test, seed))
    common.progress_bar("extension study")(seed + 1, int(config.seeds))
  out = {"extension": ext_rows, "sources": src_rows}
  wd.write_json("results.json", out)
  table = markdown(out, budgets)
  if common.is_main_process():
    io_utils.atomic_write_text(wd.file("summary.md"), table + "\n")
    print(table)
  out["summary_md"] = table
  metrics = out
  wd.write_json("metrics.json", metrics)
  return metrics


def _ms(vals) -> str:
  vals = [v for v in vals if v is not None]
  if not vals:
    return "n/a"
  return f"{np.mean(vals):.2f} +- {np.std(vals):.2f}"


def markdown(out, budgets) -> str:
  lines = []
  ext = out["extension"]
  if ext:
    lines += [f"Extension: test error % (mean +- std over {len(ext)} seeds)", "",
              "| method | " + " | ".join(f"+{b}" for b in budgets) + " | own stop | LOO stop "
              "(size) | uniform at LOO-stop size |",
              "| --- |" + " --- |" * (len(budgets) + 3)]
    for v in ext[0]["variants"]:
      rs = [r["variants"][v] for r in ext]
      lines.append(
          f"| DIVA Extend, LOO on {v.split('/')[0]}, reg {v.split('/')[1]} | "
          + " | ".join(_ms([r["curve"][b] for r in rs]) for b in budgets)
          + f" | {_ms([r['own_stop'] for r in rs])} (stop: "
          f"{','.join(sorted({r['stopped'] for r in rs}))}) | {_ms([r['loo_stop'] for r in rs])}"
          f" ({np.mean([r['loo_stop_size'] for r in rs]):.0f}) | "
          f"{_ms([r['uniform_at_loo_stop'] for r in rs])} |")
      lines.append("| (its picks mislabelled, %) | " + " | ".join(
          _ms([None if r["picked_noisy"][b] is None else 100 * r["picked_noisy"][b]
               for r in rs]) for b in budgets) + " | | | |")
    lines.append("| uniform picks | " + " | ".join(_ms([r["uniform"][b] for r in ext])
                                                   for b in budgets) + " | | | |")
    lines += ["", "| baseline | test error % |", "| --- | --- |",
              f"| core only | {_ms([r['core_only'] for r in ext])} |",
              f"| core + whole pool | {_ms([r['whole_pool'] for r in ext])} |",
              f"| core + pool minus DIVA-flagged (automatic threshold) | "
              f"{_ms([r['diva_detect_then_whole_pool'] for r in ext])} |",
              f"| core + pool minus cleanlab-flagged (exact LOO probabilities) | "
              f"{_ms([r['cleanlab_detect_then_whole_pool'] for r in ext])} |", ""]
  src = out["sources"]
  if src:
    picks = {k: np.mean([r["diva_pick_per_source"][k] for r in src]) for k in
             src[0]["diva_pick_per_source"]}
    chosen = [",".join(r["diva_sources"]) or "none" for r in src]
    deriv = {k: np.mean([r["source_derivative"][k] for r in src]) for k in
             src[0]["source_derivative"]}
    flags = {k: np.mean([r["diva_flags_per_source"][k] for r in src]) for k in
             src[0]["diva_flags_per_source"]}
    lines += [f"Multi-source: test error % (mean +- std over {len(src)} seeds)", "",
              "| training set | test error % |", "| --- | --- |",
              f"| core only | {_ms([r['core_only'] for r in src])} |",
              f"| core + all sources | {_ms([r['all_sources'] for r in src])} |"]
    for k in src[0]["core_plus"]:
      lines.append(f"| core + {k} source | {_ms([r['core_plus'][k] for r in src])} |")
    lines += [
        f"| core + DIVA pick ({np.mean([r['diva_pick_size'] for r in src]):.0f}: "
        + ", ".join(f"{k} {v:.0f}" for k, v in picks.items())
        + f") | {_ms([r['diva_pick'] for r in src])} |",
        f"| core + uniform pick (same size) | {_ms([r['uniform_pick'] for r in src])} |",
        f"| core + sources with negative group derivative (chosen: {'; '.join(chosen)}) | "
        f"{_ms([r['diva_source_choice'] for r in src])} |",
        "| all minus DIVA-flagged (automatic threshold; flagged per source "
        + ", ".join(f"{k} {v:.0f}" for k, v in flags.items())
        + f") | {_ms([r['diva_detect_then_all'] for r in src])} |",
        f"| all minus cleanlab-flagged (exact LOO) | "
        f"{_ms([r['cleanlab_detect_then_all'] for r in src])} |",
        "", "Group derivative of the core LOO loss at source weight 0 (mean): "
        + ", ".join(f"{k} {v:+.3g}" for k, v in deriv.items())]
  return "\n".join(lines)
