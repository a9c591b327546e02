"""Multi-modal / multi-source aggregation: which candidate samples from other modalities,
embedded in the same feature space, should join a few-shot core set?

Default: few-shot handwritten digits (MNIST-5k, `shots` per class) as the core; candidates
from scikit-learn's 8x8 digits (another sensor) and digits printed in matplotlib's fonts
(prototypical glyphs: the analogue of the paper's CLIP class-name text embeddings), all
embedded by the same backbone. DIVA picks candidates by the Extend rule (LOO on the core);
the group variant learns one weight per modality. Reported: test error (MNIST test split)
with the core only, with all candidates, with DIVA's pick and with a uniform pick of the same
size; how many of each modality DIVA picked; the modality weights.

User-supplied embeddings (e.g. CLIP image and text embeddings, to run the paper's own
experiment): `core_npz`, `test_npz` and `candidate_npz = ("name=path.npz", ...)`, each
`.npz` holding `features` [m, d] and `labels` [m]; then no images or backbone are used.
Candidate labels must be classes of the core.

per_sample.csv: for every core and candidate sample its source, label, the dataset
derivative of the core's LOO loss at the start (candidates at weight 0: negative = adding it
helps), whether DIVA picked it and in which order. (No label noise is injected here, so
there is no `noisy` column.) With `backbone = 'pixels'` every modality is resized to the
core's image shape.
"""

from __future__ import annotations

import time

import numpy as np

import diva_jax
from diva_jax.curation import steps as curation
from diva_jax import data
from diva_jax.app import common
from diva_jax.app import plots

MODALITIES = ("sklearn_digits", "printed_digits", "mnist_pool")


def validate(config) -> None:
  """Every config value, before anything is read or written (common.ConfigError)."""
  common.check_common(config)
  common.check_int(config, "shots", 1)
  common.check_int(config, "glyphs_per_class", 1)
  common.check_int(config, "max_per_modality", 0)
  common.check_int(config, "budget", 0)
  common.check_int(config, "k", 1)
  common.check_int(config, "group_steps", 0)
  if config.core_npz:
    if not config.test_npz:
      raise common.ConfigError("core_npz needs test_npz (the test embeddings) too.")
    items = [s for s in config.candidate_npz if s]
    if not items:
      raise common.ConfigError("core_npz needs candidate_npz = ('name=path.npz', ...).")
    for item in items:
      name, sep, path = item.partition("=")
      if not sep or not name or not path:
        raise common.ConfigError(
            f"candidate_npz entries are 'name=path.npz', got {item!r}.")
  else:
    if not config.candidate_modalities:
      raise common.ConfigError("no candidates: configure candidate_modalities or "
                               "candidate_npz.")
    for mod in config.candidate_modalities:
      common.check_choice(config, "candidate_modalities", MODALITIES, value=mod)


def _load_npz(spec: str, what: str):
  try:
    with np.load(spec, allow_pickle=False) as f:
      feats, labels = np.asarray(f["features"], np.float32), np.asarray(f["labels"], np.int64)
  except (OSError, KeyError, ValueError) as e:
    raise common.ConfigError(f"{what} {spec!r}: expected an .npz with 'features' [m, d] and "
                     f"'labels' [m] ({e}).") from e
  if feats.ndim != 2 or labels.shape != (feats.shape[0],):
    raise common.ConfigError(f"{what} {spec!r}: features {feats.shape} and labels {labels.shape} do "
                     "not fit ([m, d] and [m]).")
  if labels.size and labels.min() < 0:
    raise common.ConfigError(f"{what} {spec!r}: labels must be >= 0, got {labels.min()}.")
  return feats, labels


def _resize_to(images, shape):
  """uint8 images [m, h, w, c] resized (bilinear) / converted to shape (h', w', c')."""
  from PIL import Image
  images = np.asarray(images)
  h, w, ch = shape
  if images.shape[1:] == tuple(shape):
    return images
  out = np.empty((len(images), h, w, ch), np.uint8)
  for i, im in enumerate(images):
    if im.shape[-1] == 1 and ch == 3:
      im = np.repeat(im, 3, -1)
    elif im.shape[-1] == 3 and ch == 1:
      im = np.asarray(Image.fromarray(im).convert("L"))[..., None]
    pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
    r = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    out[i] = r[..., None] if r.ndim == 2 else r
  return out


def _sources(config, wd):
  """dict name -> (raw features, labels, images or None); plus the test set."""
  if config.core_npz:
    core = _load_npz(config.core_npz, "core_npz")
    test = _load_npz(config.test_npz, "test_npz")
    cands = {}
    for item in [s for s in config.candidate_npz if s]:
      name, sep, path = item.partition("=")
      if not sep:
        raise ValueError(f"candidate_npz entries are 'name=path.npz', got {item!r}.")
      cands[name] = _load_npz(path, f"candidate {name}")
    dims = {k: v[0].shape[1] for k, v in {"core": core, "test": test, **cands}.items()}
    if len(set(dims.values())) != 1:
      raise common.ConfigError(f"all embeddings must share one dimension, got {dims}.")
    if len(core[1]) == 0:
      raise common.ConfigError(f"core_npz {config.core_npz!r} holds no sample.")
    core_classes = set(np.unique(core[1]).tolist())
    for name, (_, labs) in cands.items():
      outside = sorted(set(np.unique(labs).tolist()) - core_classes)
      if outside:
        raise common.ConfigError(
            f"candidate {name!r} has labels {outside[:10]} that are not classes of the core "
            f"(core classes: {sorted(core_classes)[:20]}).")
    names = tuple(str(i) for i in range(int(max(core[1].max(), test[1].max())) + 1))
    return ({"core": (*core, None)} | {k: (*v, None) for k, v in cands.items()},
            (*test, None), names)

  cache_dir = config.cache_dir or wd.file("cache")
  images, labels, names = common.load_split(config, "train", 0)
  core_size = int(config.shots) * len(names)
  if core_size >= len(labels):
    raise common.ConfigError(f"shots x classes = {core_size} must be below the "
                             f"{len(labels)} train samples of {config.dataset!r}.")
  test_imgs, test_labels, _ = common.load_split(config, "test", config.max_test)
  wd.commit()  # valid: from here on, outputs (and the feature cache) are written
  backbone = common.make_backbone(config)
  split = data.core_pool_split(labels, core_size, config.seed)
  core_imgs, core_labels = images[split.core], labels[split.core]
  shape = core_imgs.shape[1:]
  if backbone is None:  # raw pixels: one image shape for every modality
    test_imgs = _resize_to(test_imgs, shape)
  out = {"core": (common.embed(config, backbone, core_imgs, dataset=config.dataset,
                               split=f"train_core{config.shots}s{config.seed}",
                               cache_dir=cache_dir), core_labels, core_imgs)}
  for mod in config.candidate_modalities:
    if mod == "sklearn_digits":
      ds = data.load("digits", "train", data_dir=config.data_dir or None)
      imgs, labs = ds.images, ds.labels
    elif mod == "printed_digits":
      imgs, labs = data.glyphs.render_digits(per_class=int(config.glyphs_per_class),
                                             seed=config.seed)
    elif mod == "mnist_pool":
      imgs, labs = images[split.pool], labels[split.pool]
    else:
      raise common.ConfigError(f"unknown modality {mod!r}: expected sklearn_digits, "
                               "printed_digits or mnist_pool (or pass candidate_npz).")
    if config.max_per_modality:
      imgs, labs = imgs[:config.max_per_modality], labs[:config.max_per_modality]
    if backbone is None:
      imgs = _resize_to(imgs, shape)
    out[mod] = (common.embed(config, backbone, imgs, dataset=mod, split=f"candidates{len(labs)}",
                             cache_dir=cache_dir), labs, imgs)
  test = (common.embed(config, backbone, test_imgs, dataset=config.dataset,
                       split=f"test{config.max_test or ''}", cache_dir=cache_dir),
          test_labels, test_imgs)
  return out, test, names


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  sources, test, class_names = _sources(config, wd)
  num_classes = len(class_names)
  order = list(sources)
  src = np.concatenate([np.full(len(sources[k][1]), i) for i, k in enumerate(order)])
  raw = np.concatenate([sources[k][0] for k in order])
  labels = np.concatenate([sources[k][1] for k in order])
  x, x_test = common.standardize(raw, test[0])
  targets = common.one_hot(labels, num_classes)
  core = src == 0
  n, n_cand = len(labels), int((~core).sum())
  budget = min(int(config.budget), n_cand) if config.budget else n_cand
  if n_cand == 0:
    raise common.ConfigError("no candidate samples: configure candidate_modalities or candidate_npz.")

  def refit(keep):
    reg = common.choose_reg(config, targets[keep], x[keep])
    return common.test_error(keep.astype(np.float32), targets, x, reg, x_test, test[1])

  def select_stage():
    reg = common.choose_reg(config, targets[core], x[core]) * config.derivative_reg_multiplier
    start = time.perf_counter()
    res = curation.extend(core, targets, features=x, reg=reg, k=int(config.k), budget=budget,
                          loss=config.loss, temperature=config.temperature,
                          progress=common.progress_bar("DIVA pick"))
    seconds = time.perf_counter() - start
    # Per-sample derivative of the core's LOO loss at the start (candidates at weight 0).
    derivative = np.asarray(diva_jax.dataset_derivative(
        core.astype(np.float32), targets, features=x, reg=reg, loss=config.loss,
        eval_mask=core, temperature=config.temperature))
    out = {"selected": res.selected, "reg": reg, "seconds": seconds, "derivative": derivative}
    if int(config.group_steps) > 0:
      groups = curation.reweight_groups(src, targets, num_groups=len(order), features=x,
                                        reg=reg, steps=int(config.group_steps),
                                        eval_mask=core, loss=config.loss,
                                        temperature=config.temperature)
      out["group_weights"] = groups.group_weights
      out["group_derivative"] = groups.group_derivatives[0]
    return out

  sel = wd.stage_arrays("select", select_stage)
  selected = sel["selected"]

  def errors_stage():
    keep = core.copy()
    keep[selected] = True
    rng = np.random.default_rng(config.seed + 5)
    uni = core.copy()
    uni[rng.choice(np.flatnonzero(~core), len(selected), replace=False)] = True
    per_mod = {}
    for i, name in enumerate(order[1:], start=1):
      per_mod[name] = refit(core | (src == i))
    return {"test_error_core_only": refit(core), "test_error_all_candidates": refit(np.ones(n, bool)),
            "test_error_diva": refit(keep) if len(selected) else refit(core),
            "test_error_uniform_same_size": refit(uni), "test_error_core_plus_each_modality": per_mod}

  errs = wd.stage_json("errors", errors_stage)
  picked = {name: int(np.sum(src[selected] == i)) for i, name in enumerate(order) if i > 0}
  available = {name: int(np.sum(src == i)) for i, name in enumerate(order) if i > 0}
  # Picks whose label disagrees with... nothing to check here: candidates are clean; report
  # instead how the picks spread over classes.
  metrics = {
      "dataset": config.dataset if not config.core_npz else "user embeddings",
      "n_core": int(core.sum()), "candidates": available, "picked_per_modality": picked,
      "num_picked": int(len(selected)), "budget": budget, "loss": config.loss,
      "derivative_reg": float(sel["reg"]), "seconds": {"diva_pick": float(sel["seconds"])},
      "group_steps": int(config.group_steps),
      "modality_weights": {name: float(w) for name, w in zip(order, sel["group_weights"])}
                          if "group_weights" in sel else {},
      "modality_derivative": {name: float(w) for name, w in zip(order, sel["group_derivative"])}
                             if "group_derivative" in sel else {},
      "picked_per_class": np.bincount(labels[selected], minlength=num_classes).tolist(),
      **errs,
  }
  wd.write_json("metrics.json", metrics)
  rank = np.full(n, -1)
  rank[selected] = np.arange(len(selected))
  wd.write_csv("per_sample.csv", {
      "index": np.arange(n), "source": np.asarray(order)[src], "label": labels,
      "derivative": sel["derivative"],
      "final_weight": ((rank >= 0) | core).astype(float), "selected": rank >= 0,
      "selection_rank": rank})
  if config.plots:
    wd.savefig("picked_per_modality.png", plots.bar_counts(picked, "candidates DIVA picked"))
    imgs = [sources[order[s]][2] for s in src[selected[:24]]]
    if all(im is not None for im in imgs) and imgs:
      offsets = {k: int(np.flatnonzero(src == i)[0]) for i, k in enumerate(order)}
      ims = [sources[order[src[i]]][2][i - offsets[order[src[i]]]] for i in selected[:24]]
      wd.savefig("picked.png", plots.image_grid(
          ims, [f"{order[src[i]][:10]} {class_names[labels[i]]}" for i in selected[:24]],
          "first 24 candidates DIVA picked"))
  if common.is_main_process():
    print(summary(metrics))
  return metrics


def summary(m: dict) -> str:
  pct = lambda v: f"{100 * v:.2f}%"
  lines = [f"== multi-modal aggregation: core {m['n_core']} ({m['dataset']}), candidates "
           f"{m['candidates']}, loss={m['loss']}",
           f"DIVA picked {m['num_picked']} in {m['seconds']['diva_pick']:.1f}s: "
           f"{m['picked_per_modality']}",
           (f"modality weights after {m['group_steps']} step(s) of "
            f"{len(m['modality_weights'])}-group reweighting: "
            + ", ".join(f"{k} {v:.2f}" for k, v in m["modality_weights"].items())
            if m["modality_weights"] else "modality weights: not computed (group_steps = 0)"),
           f"test error: core only {pct(m['test_error_core_only'])} | + all candidates "
           f"{pct(m['test_error_all_candidates'])} | + DIVA pick {pct(m['test_error_diva'])} | "
           f"+ uniform pick {pct(m['test_error_uniform_same_size'])}",
           "  core + one whole modality: " + ", ".join(
               f"{k} {pct(v)}" for k, v in m["test_error_core_plus_each_modality"].items())]
  return "\n".join(lines)
