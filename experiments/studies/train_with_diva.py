"""DIVA in the training loop against plain training, one-shot curation, a robust loss and
the oracles, on the same data, architecture and budget.

The network (`trunk`):

  mlp       EfficientNet-Lite0 frozen through its pooled features (cached), then a trained
            MLP head (`hidden` ReLU units, then the classes); its hidden layer is the
            penultimate representation that moves during training.
  block:K   EfficientNet-Lite0 frozen before block K (1..16) and trained from there on: the
            blocks K.., the head convolution and a new linear classifier on the pooled
            features (batch norm in inference mode, its scale and offset trained). The
            frozen part's activations are cached, so this runs on CPU; the pooled features
            are the penultimate representation. `block:0` trains the whole network from the
            images (for an accelerator: the `:accelerator` variant).

Every method trains the same network with Adam (`learning_rate` for new layers,
`backbone_learning_rate` for pretrained ones) for `epochs` epochs of `train_batch_size`, from
the same initialisation and sample order; with several devices (of one process or of several:
jax.distributed) each batch is split over all of them (data parallel):

  plain        the noisy labels, every sample weight 1;
  one_shot     the library's default rule on the frozen pooled features (`find_label_issues`)
               once, then training on the kept samples;
  diva         per-sample weights next to the parameters (`diva_jax.curation.training`):
               every `diva_interval` epochs from `diva_start` on, `diva_inner_steps`
               projected weight steps on the dataset derivative of the exact LOO
               cross-entropy of a ridge head on the network's *current* penultimate
               features (reg: `derivative_reg_multiplier` x their exact-LOO optimum, chosen at every
               step or, with diva_reg='first_step', once), then the parameter steps on the
               weighted loss. `diva_step='normalized'`: the largest weight change of a step
               is `diva_lr`; 'line_search': the LOO loss chooses it (backtracking from
               `diva_lr`, `training.search_update`);
  diva_frozen  the same steps on the penultimate features of the network at initialisation
               (held back from training: the pretrained pooled features for `block:K`);
  diva_both    the same steps on both, concatenated (each block standardised);
  gce          generalized cross-entropy (Zhang & Sabuncu 2018) with q = `gce_q`, needs no
               clean set;
  oracle       training on exactly the clean samples;
  true_labels  the true labels (the ceiling).

Per (setting, noise, seed, method) one resumable stage: the per-epoch test error and the mean
weight of noisy and clean samples, the detection F1 of the final weights (weight < 1/2 read as
flagged), the wall time of the parameter steps and of the derivative steps. Outputs:
results.json, curves.csv, summary.csv, curves.png.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from diva_jax.curation import detect
from diva_jax.curation import label_issues
from diva_jax.curation import training
from diva_jax.parallel import sharding
from diva_jax.app import common
from diva_jax.app import plots
from diva_jax.app.errors import ConfigError
from experiments.studies.train_nets import Net
from experiments.studies.train_nets import _batched
from experiments.studies.train_nets import _lift
from experiments.studies.train_nets import _loss_from_logp
from experiments.studies.train_nets import _optimizer
from experiments.studies.train_nets import make_net
from experiments.studies.train_nets import parse_trunk
from experiments.studies.train_nets import trunk_inputs

METHODS = ("plain", "one_shot", "diva", "diva_frozen", "diva_both", "gce", "oracle",
           "true_labels")
DIVA_METHODS = {"diva": "current", "diva_frozen": "initial", "diva_both": "both"}
NOISE_TYPES = ("uniform", "pairwise")


def parse_noise(entries) -> list[tuple[str, float]]:
  """('uniform:0.2', 'pairwise:0.2') -> [('uniform', 0.2), ...]."""
  out = []
  for e in tuple(entries):
    kind, _, rate = str(e).partition(":")
    try:
      r = float(rate)
    except ValueError:
      r = -1.0
    if kind not in NOISE_TYPES or not 0.0 < r < 1.0:
      raise ConfigError(f"noise entries are 'uniform:RATE' or 'pairwise:RATE' with RATE in "
                        f"(0, 1), got {e!r}.")
    out.append((kind, r))
  if not out:
    raise ConfigError("noise must list at least one 'uniform:RATE' or 'pairwise:RATE' entry.")
  return out


def validate(config) -> None:
  """Every config value, before anything is read or written (ConfigError)."""
  common.check_common(config)
  common.check_settings(config)
  parse_noise(config.noise)
  block = parse_trunk(config.trunk)
  if block is not None and config.backbone != "efficientnet_lite0":
    raise ConfigError(f"trunk={config.trunk!r} trains part of EfficientNet-Lite0: it needs "
                      f"backbone='efficientnet_lite0', got {config.backbone!r}.")
  common.check_subset(config, "methods", METHODS)
  for name, minimum in (("seeds", 1), ("epochs", 1), ("hidden", 1), ("diva_interval", 1),
                        ("diva_start", 0), ("diva_inner_steps", 1), ("train_batch_size", 1)):
    common.check_int(config, name, minimum)
  for name in ("learning_rate", "backbone_learning_rate", "diva_lr", "gce_q", "temperature"):
    common.check_float(config, name, low=0.0, low_open=True)
  if config.gce_q > 1:
    raise ConfigError(f"gce_q must be in (0, 1], got {config.gce_q}.")
  common.check_float(config, "derivative_reg_multiplier", low=0.0, low_open=True)
  common.check_choice(config, "diva_reg", ("every_step", "first_step"))
  common.check_choice(config, "diva_step", ("normalized", "line_search"))


# ------------------------------------------------------------------------------------------
# The networks: `init(key) -> params`, `apply(params, x) -> (penultimate, logits)`.


def train_one(config, method, net: Net, train_x, labels, true_labels, flipped, test_x,
              test_labels, num_classes, seed, one_shot_keep=None, devices=None) -> dict:
  """Trains the network with one method; per-epoch curves and the final numbers.

  `devices` (default: every device of every process) split each batch (data parallel,
  parameters replicated); the batch size is rounded up to a multiple of their number.
  Multi-process: every process calls this with the same arguments and gets the same result."""
  n = len(labels)
  rng = np.random.default_rng(seed)
  params = net.init(jax.random.PRNGKey(seed))
  opt = _optimizer(config, net, params)
  opt_state = opt.init(params)
  y_all = np.asarray(true_labels if method == "true_labels" else labels, np.int32)
  loss_kind = "gce" if method == "gce" else "ce"
  tx = training.weight_optimizer(float(config.diva_lr))
  state = training.init(n, tx)
  fixed = {"oracle": ~flipped, "one_shot": one_shot_keep}.get(method)
  if fixed is not None:
    state = state._replace(weights=jnp.asarray(fixed, jnp.float32))
  q = float(config.gce_q)
  devices = jax.devices() if devices is None else list(devices)
  bs = int(config.train_batch_size)
  bs = -(-bs // len(devices)) * len(devices)  # a multiple of the device count
  logging.info("%s: each batch of %d split over %d devices of %d processes", method, bs,
               len(devices), len({d.process_index for d in devices}))
  put = jnp.asarray
  gather = lambda a: a
  if len(devices) > 1:
    # Data parallel over every device of every process: each batch's rows split over them,
    # parameters replicated. Every process holds the whole dataset and the same weights, so
    # each device's part is cut from the host arrays; what the host reads back (the step's
    # features, the predictions) is gathered in the step.
    mesh = sharding.data_mesh(devices)
    rows, everywhere = (NamedSharding(mesh, PartitionSpec("data")),
                        NamedSharding(mesh, PartitionSpec()))
    place = lambda spec: lambda a: jax.make_array_from_callback(
        np.shape(a), spec, lambda idx: np.asarray(a)[idx])
    put = place(rows)
    params = jax.tree.map(place(everywhere), params)
    opt_state = jax.tree.map(place(everywhere), opt_state)
    gather = lambda a: jax.lax.with_sharding_constraint(a, everywhere)

  @jax.jit
  def step(params, opt_state, xb, yb, wb):
    def f(p):
      pen, out = net.apply(p, xb)
      logp = jax.nn.log_softmax(out)
      return training.weighted_mean(_loss_from_logp(logp, yb, loss_kind, q), wb), pen
    (loss, pen), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, gather(pen)

  apply = jax.jit(lambda p, x: jax.tree.map(gather, net.apply(p, x)))
  penultimate = lambda p, x: _batched(lambda b: apply(p, put(b)), x, multiple=len(devices))

  def batches(order):
    """Fixed-size batches; the last one padded with weight-0 rows (one compiled shape)."""
    for i in range(0, n, bs):
      idx = order[i:i + bs]
      pad = bs - len(idx)
      yield np.concatenate([idx, np.zeros(pad, idx.dtype)]), pad

  # Compile the parameter step before timing (result discarded).
  idx0, _ = next(batches(np.arange(n)))
  jax.block_until_ready(step(params, opt_state, put(train_x[idx0]), put(y_all[idx0]),
                             put(np.ones(bs, np.float32))))
  kind = DIVA_METHODS.get(method)
  initial = penultimate(params, train_x)[0] if kind in ("initial", "both") else None
  targets = np.eye(num_classes, dtype=np.float32)[labels]
  reg, seen = None, None
  curves = {"epoch": [], "test_error": [], "mean_weight_noisy": [], "mean_weight_clean": []}
  derivative_seconds, train_seconds = 0.0, 0.0
  for epoch in range(int(config.epochs)):
    if (kind is not None and epoch >= int(config.diva_start)
        and (epoch - int(config.diva_start)) % int(config.diva_interval) == 0):
      t0 = time.perf_counter()
      if kind == "initial":
        feats = _lift(initial)
      else:
        # The current features: recorded by the last epoch's parameter steps (each sample's
        # at the parameters of its batch; no extra forward pass), or at the current
        # parameters before any epoch has run.
        current = seen if seen is not None else penultimate(params, train_x)[0]
        feats = _lift(current) if kind == "current" else _lift(initial, current)
      if reg is None or config.diva_reg == "every_step":
        reg = training.features_reg(feats, targets, temperature=float(config.temperature),
                                    multiplier=float(config.derivative_reg_multiplier))
      if config.diva_step == "line_search":
        state = training.search_update(state, feats, targets, reg=reg,
                                       max_step=float(config.diva_lr),
                                       steps=int(config.diva_inner_steps), loss="ce",
                                       temperature=float(config.temperature))
      else:
        for _ in range(int(config.diva_inner_steps)):
          state = training.update(state, tx, feats, targets, reg=reg, loss="ce",
                                  temperature=float(config.temperature))
      jax.block_until_ready(state.weights)
      derivative_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    w = np.asarray(state.weights)
    record = kind in ("current", "both")
    pens = []
    for idx, pad in batches(rng.permutation(n)):
      wb = w[idx].copy()
      if pad:
        wb[-pad:] = 0.0
      params, opt_state, pen = step(params, opt_state, put(train_x[idx]), put(y_all[idx]),
                                    put(wb))
      if record:
        pens.append((idx[:bs - pad], pen))
    if record:
      seen = np.empty((n, pens[0][1].shape[1]), np.float32)
      for idx, pen in pens:
        seen[idx] = np.asarray(pen)[:len(idx)]
    jax.block_until_ready(params)
    train_seconds += time.perf_counter() - t0
    wn = np.asarray(state.weights)
    pred = np.argmax(penultimate(params, test_x)[1], 1)
    curves["epoch"].append(epoch + 1)
    curves["test_error"].append(100 * float(np.mean(pred != test_labels)))
    curves["mean_weight_noisy"].append(float(wn[flipped].mean()) if flipped.any() else None)
    curves["mean_weight_clean"].append(float(wn[~flipped].mean()))
  final_w = np.asarray(state.weights)
  f1 = (detect.detection_metrics((final_w < 0.5) - 0.5, flipped).f1
        if flipped.any() and (kind is not None or method == "one_shot") else None)
  return {"curves": curves, "test_error": curves["test_error"][-1], "detection_f1": f1,
          "train_seconds": train_seconds, "derivative_seconds": derivative_seconds,
          "flagged": int(np.sum(final_w < 0.5))}


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs the comparison; returns the summary (also in <workdir>/metrics.json)."""
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  wd.commit()
  rows, curve_rows = [], {k: [] for k in ("dataset", "noise", "seed", "method", "epoch",
                                          "test_error", "mean_weight_noisy",
                                          "mean_weight_clean")}
  for dataset, max_train in common.check_settings(config):
    # The per-setting config of the shared feature helpers (not fields of this binary's
    # config: `settings` and `noise` give them).
    c = ml_collections.ConfigDict(dict(config.to_dict(), dataset=dataset, max_train=max_train,
                                       linearize="last_layer", noise_type="uniform",
                                       noise_rate=0.0))
    sub = common.setting_workdir(workdir, wd, config, c, dataset, max_train)
    train, test = common.prepare_features(c, sub)
    k = len(train.class_names)
    inputs = trunk_inputs(c, train, test, c.cache_dir, sub)
    net = make_net(c, inputs, k)
    for kind, rate in parse_noise(config.noise):
      for seed in range(int(config.seed), int(config.seed) + int(config.seeds)):
        c.noise_type, c.noise_rate, c.seed = kind, rate, seed
        noisy, flipped = common.noisy_labels(c, train.labels, k)
        keep = None
        if "one_shot" in config.methods:
          keep = ~label_issues.find_label_issues(
              noisy, features=train.features, num_classes=k,
              temperature=float(config.temperature)).flagged
        for method in config.methods:
          name = f"{dataset}_{max_train}-{kind}{rate:g}-seed{seed}-{method}"
          res = wd.stage_json(name, lambda: train_one(
              c, method, net, inputs.train, noisy, train.labels, flipped, inputs.test,
              test.labels, k, seed, keep))
          rows.append({"dataset": dataset, "noise": f"{kind}:{rate:g}", "seed": seed,
                       "method": method, **{key: v for key, v in res.items()
                                            if key != "curves"}})
          cv = res["curves"]
          for i in range(len(cv["epoch"])):
            for key, val in (("dataset", dataset), ("noise", f"{kind}:{rate:g}"),
                             ("seed", seed), ("method", method)):
              curve_rows[key].append(val)
            for key in ("epoch", "test_error", "mean_weight_noisy", "mean_weight_clean"):
              v = cv[key][i]
              curve_rows[key].append(np.nan if v is None else v)
  wd.write_json("results.json", rows)
  wd.write_csv("curves.csv", {k_: np.asarray(v) for k_, v in curve_rows.items()})
  summary = _summary(rows)
  wd.write_csv("summary.csv", {k_: np.asarray(v) for k_, v in summary.items()})
  if config.plots:
    wd.savefig("curves.png", _plot(curve_rows, config.methods))
  metrics = {"rows": len(rows), "summary": [dict(zip(summary, vals))
                                            for vals in zip(*summary.values())]}
  wd.write_json("metrics.json", metrics)
  if common.is_main_process():
    _print(summary)
  return metrics


def _summary(rows) -> dict:
  """Mean and std over seeds per (dataset, noise, method)."""
  cells = {}
  for r in rows:
    cells.setdefault((r["dataset"], r["noise"], r["method"]), []).append(r)
  out = {k: [] for k in ("dataset", "noise", "method", "seeds", "test_error_mean",
                         "test_error_std", "detection_f1_mean", "overhead_vs_plain")}
  plain_time = {(r["dataset"], r["noise"], r["seed"]): r["train_seconds"]
                for r in rows if r["method"] == "plain"}
  for (dataset, noise, method), rs in cells.items():
    errs = np.array([r["test_error"] for r in rs])
    f1s = [r["detection_f1"] for r in rs if r["detection_f1"] is not None]
    over = [(r["train_seconds"] + r["derivative_seconds"])
            / plain_time[(dataset, noise, r["seed"])] - 1.0
            for r in rs if (dataset, noise, r["seed"]) in plain_time]
    out["dataset"].append(dataset)
    out["noise"].append(noise)
    out["method"].append(method)
    out["seeds"].append(len(rs))
    out["test_error_mean"].append(float(errs.mean()))
    out["test_error_std"].append(float(errs.std()))
    out["detection_f1_mean"].append(float(np.mean(f1s)) if f1s else np.nan)
    out["overhead_vs_plain"].append(float(np.mean(over)) if over else np.nan)
  return out


def _plot(curve_rows, methods):
  plt = plots._plt()  # pylint: disable=protected-access
  settings = sorted({(d, n) for d, n in zip(curve_rows["dataset"], curve_rows["noise"])})
  fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.4), squeeze=False)
  cols = {k: np.asarray(v) for k, v in curve_rows.items()}
  for j, (dataset, noise) in enumerate(settings):
    for method in methods:
      sel = (cols["dataset"] == dataset) & (cols["noise"] == noise) & (cols["method"] == method)
      epochs = np.unique(cols["epoch"][sel])
      mean = lambda key: [np.nanmean(cols[key][sel & (cols["epoch"] == e)]) for e in epochs]
      axes[0, j].plot(epochs, mean("test_error"), label=method)
      if method in DIVA_METHODS:
        line = axes[1, j].plot(epochs, mean("mean_weight_noisy"),
                               label=f"{method}: noisy samples")[0]
        axes[1, j].plot(epochs, mean("mean_weight_clean"), "--", color=line.get_color(),
                        label=f"{method}: clean samples")
    axes[0, j].set_title(f"{dataset}, {noise}")
    axes[0, j].set_ylabel("test error (%)")
    axes[1, j].set_xlabel("epoch")
    axes[1, j].set_ylabel("mean weight")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def _print(summary) -> None:
  print("== train_with_diva: test error % (mean +- std over seeds), detection F1, time overhead")
  for i in range(len(summary["method"])):
    f1 = summary["detection_f1_mean"][i]
    print(f"  {summary['dataset'][i]:>12} {summary['noise'][i]:>13} {summary['method'][i]:>11}"
          f"  {summary['test_error_mean'][i]:6.2f} +- {summary['test_error_std'][i]:4.2f}"
          + (f"  F1 {f1:.3f}" if np.isfinite(f1) else "")
          + f"  overhead {100 * summary['overhead_vs_plain'][i]:+.0f}%")
