"""Dataset extension: grow a small core set with the pool samples the derivative favours.

Core: a small stratified labelled set of the train split. Pool: the rest of the train split,
a fraction of it mislabelled (`pool_noise_rate`), so that adding everything is not best.
DIVA Extend (`diva_jax.curation.steps.extend`): pool samples start at weight 0, the LOO loss is
evaluated on the core only, the k samples with the most negative derivative are added per
round, up to the largest budget. Against, in the same run: uniform random picks of the same
sizes (several seeds) and the whole pool. Test error is that of the ridge head refit on
core + picks, reg re-chosen by exact LOO on that training set.
"""

from __future__ import annotations

import time

import numpy as np

from diva_jax.curation import steps as curation
from diva_jax import data
from diva_jax.app import common
from diva_jax.app import plots
import diva_jax


def _refit_error(config, targets, x, keep, test):
  reg = common.choose_reg(config, targets[keep], x[keep])
  return common.test_error(keep.astype(np.float32), targets, x, reg, test.features, test.labels)


def validate(config) -> list[int]:
  """Every config value, before anything is read or written (common.ConfigError); returns
  the sorted budgets."""
  common.check_common(config)
  common.check_int(config, "core_size", 1)
  common.check_int(config, "k", 1)
  common.check_int(config, "uniform_repeats", 1)
  common.check_float(config, "pool_noise_rate", low=0.0, high=1.0, high_open=True)
  return sorted(common.check_ints(config, "budgets", 1, nonempty=True))


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  budgets = validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)

  def check(train_labels):  # what depends on the data, before anything is written
    n = len(train_labels)
    if not 1 <= config.core_size < n:
      raise common.ConfigError(f"core_size must be in [1, {n - 1}] for {n} train samples, "
                               f"got {config.core_size}.")
    if budgets[-1] > n - config.core_size:
      raise common.ConfigError(f"budgets must be in [1, pool size = {n - config.core_size}], "
                               f"got {budgets}.")

  train, test = common.prepare_features(config, wd, check=check)
  num_classes = len(train.class_names)
  n = len(train.labels)
  split = data.core_pool_split(train.labels, int(config.core_size), config.seed)
  core = np.zeros(n, bool)
  core[split.core] = True
  pool_size = n - int(core.sum())
  # Noise in the pool only: the core is the trusted labelled set.
  rng = np.random.default_rng(config.seed + 17)
  labels = train.labels.copy()
  noisy = np.zeros(n, bool)
  if config.pool_noise_rate > 0:
    pool_idx = split.pool
    flip = pool_idx[rng.uniform(size=pool_idx.size) < config.pool_noise_rate]
    labels[flip] = (labels[flip] + rng.integers(1, num_classes, flip.size)) % num_classes
    noisy[flip] = True
  targets = common.one_hot(labels, num_classes)
  x = train.features

  def extend_stage():
    # The derivative is taken at reg x derivative_reg_multiplier: as in outlier rejection,
    # a smoother fit than the exact-LOO optimum ranks samples better (README: sensitivity).
    reg = common.choose_reg(config, targets[core], x[core]) * config.derivative_reg_multiplier
    start = time.perf_counter()
    res = curation.extend(core, targets, features=x, reg=reg, k=int(config.k),
                          budget=budgets[-1], loss=config.loss,
                          temperature=config.temperature,
                          progress=common.progress_bar("DIVA extend"))
    seconds = time.perf_counter() - start
    first = np.asarray(diva_jax.dataset_derivative(
        core.astype(np.float32), targets, features=x, reg=reg, loss=config.loss,
        eval_mask=core, temperature=config.temperature))
    return {"selected": res.selected, "reg": reg, "seconds": seconds,
            "first_derivative": first, "stopped": res.stopped}

  ext = wd.stage_arrays("extend", extend_stage)
  selected = ext["selected"]

  def curves_stage():
    out = {"budgets": budgets, "core_only": _refit_error(config, targets, x, core, test)}
    diva, diva_noisy = [], []
    for b in budgets:
      keep = core.copy()
      keep[selected[:b]] = True
      diva.append(_refit_error(config, targets, x, keep, test) if b <= len(selected) else None)
      diva_noisy.append(float(noisy[selected[:b]].mean()) if b <= len(selected) else None)
    out["diva"], out["diva_picked_noisy_fraction"] = diva, diva_noisy
    uniform = []
    for r in range(int(config.uniform_repeats)):
      rr = np.random.default_rng(config.seed + 1000 + r)
      order = rr.permutation(np.flatnonzero(~core))
      row = []
      for b in budgets:
        keep = core.copy()
        keep[order[:b]] = True
        row.append(_refit_error(config, targets, x, keep, test))
      uniform.append(row)
    out["uniform"] = np.mean(uniform, 0).tolist()
    out["uniform_std"] = np.std(uniform, 0).tolist()
    out["full_pool"] = _refit_error(config, targets, x, np.ones(n, bool), test)
    return out

  curves = wd.stage_json("curves", curves_stage)
  metrics = {
      "dataset": config.dataset, "backbone": config.backbone, "n_core": int(core.sum()),
      "n_pool": pool_size, "pool_noise_rate": config.pool_noise_rate,
      "num_pool_noisy": int(noisy.sum()), "loss": config.loss, "derivative_reg": float(ext["reg"]),
      "k": int(config.k), "num_selected": int(len(selected)), "stopped": str(ext["stopped"]),
      "seconds": {"diva_extend": float(ext["seconds"])}, **curves,
  }
  wd.write_json("metrics.json", metrics)
  rank = np.full(n, -1)
  rank[selected] = np.arange(len(selected))
  final = core.copy()
  final[selected] = True
  wd.write_csv("per_sample.csv", {
      "index": np.arange(n), "source": np.where(core, "core", "pool"), "label": labels,
      "true_label": train.labels, "noisy": noisy, "derivative": ext["first_derivative"],
      "final_weight": final.astype(float), "selected": rank >= 0, "selection_rank": rank})
  if config.plots:
    wd.savefig("extension_curves.png", plots.extension_curves(
        [b for b, e in zip(budgets, curves["diva"]) if e is not None],
        {"DIVA extend": [e for e in curves["diva"] if e is not None]} | {
            "uniform": [u for u, e in zip(curves["uniform"], curves["diva"]) if e is not None]},
        curves["full_pool"], curves["core_only"],
        f"{config.dataset}: core {int(core.sum())}, pool {pool_size} "
        f"({config.pool_noise_rate:.0%} mislabelled)"))
    idx = selected[:16]
    wd.savefig("picked.png", plots.image_grid(
        train.images[idx], [f"#{j} {train.class_names[labels[i]]}" + (" NOISY" if noisy[i] else "")
                            for j, i in enumerate(idx)], "first 16 pool samples DIVA added"))
  if common.is_main_process():
    print(summary(metrics))
  return metrics


def summary(m: dict) -> str:
  pct = lambda v: " n/a " if v is None else f"{100 * v:5.2f}"
  lines = [f"== dataset extension: {m['dataset']} ({m['backbone']}), core {m['n_core']}, pool "
           f"{m['n_pool']} ({m['num_pool_noisy']} mislabelled), loss={m['loss']}, k={m['k']}; "
           f"DIVA added {m['num_selected']} ({m['stopped']}) in {m['seconds']['diva_extend']:.1f}s",
           f"test error %: core only {pct(m['core_only'])}, core + whole pool {pct(m['full_pool'])}",
           "  budget   DIVA  uniform  (DIVA picks mislabelled)"]
  for b, d, u, f in zip(m["budgets"], m["diva"], m["uniform"], m["diva_picked_noisy_fraction"]):
    lines.append(f"  {b:6d}  {pct(d)}  {pct(u)}   ({'n/a' if f is None else f'{100 * f:.0f}%'})")
  return "\n".join(lines)
