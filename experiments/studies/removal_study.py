"""Removing the flagged samples against removing exactly the noisy ones: which label-free
detector closes the gap, and why the errors that remain cost what they cost.

For each `dataset:max_train` setting the features are extracted once (cached); for each seed
the labels get uniform noise at `noise_rate`, and every detector in `detectors` proposes a
curation of the training set without test labels or noise mask:

  derivative         the plain rule ("the default" below; the binary's default before
                     shifted views): the `estimate_num_issues` most harmful samples of the
                     dataset derivative at `detection_reg_multiplier` x the exact-LOO reg
                     (sign rule as cap);
  shift_views        the same rule on the backbone's features averaged over each image and
                     its four copies shifted by `view_shift` of the side
                     (`common.detection_features`); the refit stays on the original features;
  rank_ensemble      the same count, ranked by the summed ranks of the derivatives at each of
                     `ensemble_multipliers`;
  class_conditional  per given label j, the derivative's top k_j, k_j the off-diagonal row sum
                     of the calibrated confident joint (cleanlab's prune-by-class);
  second_round       the default, then the default again on the kept samples;
  cleaned_confidence the lowest LOO probabilities of the given label after one cleaning round
                     (the LOO of the refit on the kept samples; a removed sample's prediction
                     is the refit's, out of sample), the count re-estimated;
  rbf_kernel         the derivative of kernel ridge with an RBF kernel on the features
                     (`diva_jax.rbf_kernel`: bandwidth `rbf_bandwidth` x the median squared
                     distance), its own LOO reg and count: a non-linear head;
  linear_and_rbf     flagged by both `derivative` and `rbf_kernel`;
  knn_disagreement   the count, ranked by the share of the `knn` nearest neighbours (features,
                     Euclidean) whose given label differs (ties: the derivative);
  readmit            the default, then re-admitting flagged samples whose derivative at the
                     cleaned weights (weight 0, so: adding them back) is negative;
  relabel            the default's flags relabelled to their LOO argmax instead of removed;
  soft_relabel       the default's flags kept, their targets replaced by the class
                     probabilities of the refit without them (softmax of its predictions);
  remove_reweight    the default, then one `reweight(line_search=True)` step from its weights
                     (the step may give weight back to removed samples).

Each curation is refit (ridge head, reg re-chosen by exact LOO on the samples with weight > 0)
and scored on the test split; "gap" is its test error minus that of removing exactly the noisy
samples (the oracle, same refit rule). Two controls use the noise mask and say so:
`oracle_count` (the derivative's ranking cut at the true number of noisy labels) and
`random_errors` (the oracle set with as many clean samples removed and noisy samples kept as
the default detector got wrong, chosen at random; `random_draws` draws averaged): what the
default's number of errors would cost if they were random, against what its errors cost.

With either control, also the default's error profile (error_profile.csv): per group (noisy
kept, noisy removed, clean removed, clean kept) the count, the mean LOO probability of the
given label, and how a ridge head fit on the clean labels sees them (its exact-LOO
probability of the true label, the share it classifies right).

Outputs: results.json (every run and detector), summary.csv (mean and std of test error, gap,
F1 and samples removed per setting and detector), error_profile.csv; per (setting, seed) a
resumable stage.
"""

from __future__ import annotations


import numpy as np

from diva_jax.app import common
from diva_jax.app.errors import ConfigError
from diva_jax.curation.detect import confident_joint
import diva_jax
import jax
import ml_collections

DETECTORS = ("derivative", "shift_views", "rank_ensemble", "class_conditional", "second_round",
             "cleaned_confidence", "rbf_kernel", "linear_and_rbf", "knn_disagreement",
             "readmit", "relabel", "soft_relabel", "remove_reweight")
CONTROLS = ("oracle_count", "random_errors")
_RBF = ("rbf_kernel", "linear_and_rbf")
_KNN = ("knn_disagreement",)


def validate(config) -> None:
  common.check_common(config)
  common.check_settings(config)
  common.check_float(config, "noise_rate", low=0.0, high=1.0, low_open=True, high_open=True)
  common.check_int(config, "seeds", 1)
  common.check_int(config, "max_test", 0)
  common.check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  common.check_subset(config, "detectors", DETECTORS + CONTROLS)
  common.check_float(config, "detection_reg_multiplier", low=0.0, low_open=True)
  grid = tuple(config.ensemble_multipliers)
  if len(grid) < 2 or not all(isinstance(m, (int, float)) and not isinstance(m, bool)
                              and m > 0 for m in grid):
    raise ConfigError(f"ensemble_multipliers must list at least 2 numbers > 0, got {grid}.")
  common.check_float(config, "rbf_bandwidth", low=0.0, low_open=True)
  common.check_int(config, "rbf_max_n", 2)
  common.check_int(config, "knn", 1)
  common.check_int(config, "random_draws", 1)
  common.check_float(config, "view_shift", low=0.0, high=0.5, low_open=True, high_open=True)


def _top(score, k, allowed=None):
  """The k highest scores (stable order), only among `allowed` if given."""
  s = np.asarray(score, np.float64)
  idx = np.arange(len(s)) if allowed is None else np.flatnonzero(allowed)
  pick = idx[np.argsort(-s[idx], kind="stable")[:max(0, int(k))]]
  out = np.zeros(len(s), bool)
  out[pick] = True
  return out


def _ranks(v):
  return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64)


def confident_joint_rows(probs, labels, num_classes):
  """Per given label, the off-diagonal mass of the calibrated confident joint (the quantity
  `diva_jax.estimate_num_issues` sums), rounded: the per-class number of label issues."""
  cal = confident_joint(probs, labels)
  assert cal.shape == (num_classes, num_classes), cal.shape
  return np.round(cal.sum(1) - np.diag(cal)).astype(int)


class _Seed:
  """One noisy draw: the shared quantities every detector reads, computed once, lazily."""

  def __init__(self, c, x, noisy, num_classes, kernel, neighbours, x_views=None):
    self.dj, self.c, self.x, self.noisy = diva_jax, c, x, noisy
    self.x_views = x_views
    self.t = common.one_hot(noisy, num_classes)
    self.n, self.num_classes = len(noisy), num_classes
    self.ones = np.ones(self.n, np.float32)
    self.kernel, self.neighbours = kernel, neighbours
    self._deriv = {}
    self.reg = self.select_reg(np.ones(self.n, bool))
    self.probs = self.loo_probs(self.ones, self.reg)
    self.k = diva_jax.estimate_num_issues(self.probs, noisy)

  def select_reg(self, keep, kernel=None, features=None):
    x = self.x if features is None else features
    kw = ({"features": x[keep]} if kernel is None
          else {"kernel": kernel[np.ix_(keep, keep)]})
    return float(self.dj.select_reg(self.t[keep], loss=self.c.loss,
                                    temperature=self.c.temperature, **kw).reg)

  def loo_probs(self, w, reg, **kw):
    kw = kw or {"features": self.x}
    return common.softmax(np.asarray(self.dj.loo_predictions(w, self.t, reg=reg, **kw)),
                          self.c.temperature)

  def derivative(self, mult, w=None, reg=None, **kw):
    key = (mult, None if w is None else w.tobytes(), reg, tuple(kw))
    if key not in self._deriv:
      self._deriv[key] = np.asarray(self.dj.dataset_derivative(
          self.ones if w is None else w, self.t, reg=(reg or self.reg) * mult,
          loss=self.c.loss, temperature=self.c.temperature, outer="weighted",
          **(kw or {"features": self.x})))  # the default rule's definition
    return self._deriv[key]

  def _rule(self, **kw):
    """The library's default rule (`diva_jax.find_label_issues`) on features or a kernel."""
    return self.dj.find_label_issues(
        self.noisy, num_classes=self.num_classes, loss=self.c.loss,
        temperature=self.c.temperature,
        detection_reg_multiplier=self.c.detection_reg_multiplier, **kw)

  def default(self):
    """The default rule on the plain features (its derivative seeds the cache)."""
    if not hasattr(self, "_default"):
      res = self._rule(features=self.x, reg=self.reg)
      self._deriv[(self.c.detection_reg_multiplier, None, None, ())] = res.derivative
      self._default = res.flagged
    return self._default

  def rbf_flags(self):
    """The default's rule on the RBF kernel: its own exact-LOO reg and count."""
    if not hasattr(self, "_rbf_flags"):
      self._rbf_flags = self._rule(kernel=self.kernel).flagged
    return self._rbf_flags

  def views_flags(self):
    """The default's rule on the shifted-views features: their own reg and count."""
    return self._rule(features=self.x_views).flagged


def _detect(name, s: _Seed, c):
  """(weights, targets) of the curation `name` proposes (targets None: the noisy ones)."""
  remove = lambda flags: ((~flags).astype(np.float32), None)
  if name == "derivative":
    return remove(s.default())
  if name == "shift_views":
    return remove(s.views_flags())
  if name == "rank_ensemble":
    d = s.derivative(c.detection_reg_multiplier)
    score = sum(_ranks(s.derivative(float(m))) for m in c.ensemble_multipliers)
    return remove(_top(score, s.k, d > 0))
  if name == "class_conditional":
    d = s.derivative(c.detection_reg_multiplier)
    kj = confident_joint_rows(s.probs, s.noisy, s.num_classes)
    flags = np.zeros(s.n, bool)
    for j in range(s.num_classes):
      flags |= _top(d, kj[j], (s.noisy == j) & (d > 0))
    return remove(flags)
  if name in ("second_round", "cleaned_confidence", "readmit", "soft_relabel",
              "remove_reweight"):
    first = s.default()
    keep = ~first
    w = keep.astype(np.float32)
    reg = s.select_reg(keep)
    if name == "second_round":
      d = s.derivative(c.detection_reg_multiplier, w, reg)
      p = s.loo_probs(w, reg)
      k2 = s.dj.estimate_num_issues(p[keep], s.noisy[keep])
      return remove(first | _top(d, k2, keep & (d > 0)))
    if name == "cleaned_confidence":
      p = s.loo_probs(w, reg)
      k2 = s.dj.estimate_num_issues(p, s.noisy)
      return remove(_top(-p[np.arange(s.n), s.noisy], k2))
    if name == "readmit":
      d = s.derivative(c.detection_reg_multiplier, w, reg)
      return remove(first & ~(d < 0))
    if name == "soft_relabel":
      targets = s.t.copy()
      targets[first] = s.loo_probs(w, reg)[first]  # weight 0: the refit's own prediction
      return s.ones, targets.astype(np.float32)
    res = s.dj.reweight(w, s.t, features=s.x, reg=reg, steps=1, loss=c.loss,
                        temperature=c.temperature, line_search=True)
    return np.asarray(res.weights, np.float32), None
  if name in _RBF:
    flags = s.rbf_flags()
    return remove(flags if name == "rbf_kernel" else flags & s.default())
  if name == "knn_disagreement":
    d = s.derivative(c.detection_reg_multiplier)
    disagree = (s.noisy[s.neighbours] != s.noisy[:, None]).mean(1)
    return remove(_top(disagree + 1e-9 * _ranks(d) / s.n, s.k))
  if name == "relabel":
    flags = s.default()
    labels = s.noisy.copy()
    labels[flags] = s.probs[flags].argmax(1)
    return s.ones, common.one_hot(labels, s.num_classes)
  raise AssertionError(name)


def _one_seed(c, x, labels, xte, yte, num_classes, seed, kernel, neighbours, x_views):
  c.seed = seed
  noisy, flipped = common.noisy_labels(c, labels, num_classes)
  s = _Seed(c, x, noisy, num_classes, kernel, neighbours, x_views)

  def refit(w, targets=None):  # test error % of the ridge head; reg by exact LOO on w > 0
    t = s.t if targets is None else targets
    keep = w > 0
    reg = float(diva_jax.select_reg(t[keep], features=x[keep], loss=c.loss,
                                    temperature=c.temperature).reg)
    return 100 * common.test_error(w.astype(np.float32), t, x, reg, xte, yte)

  f1 = lambda flags: float(diva_jax.detection_metrics(flags - 0.5, flipped).f1)
  oracle = refit((~flipped).astype(np.float32))
  row = {"seed": seed, "n": s.n, "noisy": int(flipped.sum()), "estimated": int(s.k),
         "test_error_before": refit(s.ones), "test_error_oracle": oracle, "detectors": {}}

  def record(name, w, targets=None, flags=None):
    err = refit(w, targets)
    flags = (w == 0) if flags is None else flags
    row["detectors"][name] = {"test_error": err, "gap": err - oracle, "f1": f1(flags),
                              "removed": int((w == 0).sum())}

  for name in c.detectors:
    if name in DETECTORS:
      w, targets = _detect(name, s, c)
      record(name, w, targets,
             flags=s.default() if name in ("relabel", "soft_relabel") else None)
  if "oracle_count" in c.detectors:
    record("oracle_count", (~_top(s.derivative(c.detection_reg_multiplier), int(flipped.sum()))
                            ).astype(np.float32))
  if "random_errors" in c.detectors:
    flags = s.default()
    fp, fn = int((flags & ~flipped).sum()), int((flipped & ~flags).sum())
    rng = np.random.default_rng([seed, 7])
    errs = []
    for _ in range(int(c.random_draws)):
      rm = flipped.copy()
      rm[rng.choice(np.flatnonzero(flipped), fn, replace=False)] = False
      rm[rng.choice(np.flatnonzero(~flipped), fp, replace=False)] = True
      errs.append(refit((~rm).astype(np.float32)))
    err = float(np.mean(errs))
    row["detectors"]["random_errors"] = {"test_error": err, "gap": err - oracle,
                                         "f1": f1(flags), "removed": int(flags.sum())}
  if "oracle_count" in c.detectors or "random_errors" in c.detectors:
    row["default_errors"] = _error_profile(s, labels, flipped)
  return row


def _error_profile(s: _Seed, labels, flipped):
  """Who the default detector gets wrong (a control: uses the clean labels). Per group
  (noisy kept, noisy removed, clean removed, clean kept): the count, the mean LOO probability
  of the given label, and how a model fit on the clean labels sees them (the mean exact-LOO
  probability of the true label and the share whose LOO argmax is the true label)."""
  clean_t = common.one_hot(labels, s.num_classes)
  reg = float(s.dj.select_reg(clean_t, features=s.x, loss=s.c.loss,
                              temperature=s.c.temperature).reg)
  clean_p = common.softmax(np.asarray(s.dj.loo_predictions(s.ones, clean_t, features=s.x,
                                                           reg=reg)), s.c.temperature)
  flags, idx = s.default(), np.arange(s.n)
  out = {}
  for name, m in (("noisy_kept", flipped & ~flags), ("noisy_removed", flipped & flags),
                  ("clean_removed", ~flipped & flags), ("clean_kept", ~flipped & ~flags)):
    out[name] = {"count": int(m.sum()),
                 "loo_p_given": float(s.probs[idx, s.noisy][m].mean()) if m.any() else None,
                 "clean_model_p_true": float(clean_p[idx, labels][m].mean()) if m.any() else None,
                 "clean_model_correct": (float((clean_p[m].argmax(1) == labels[m]).mean())
                                         if m.any() else None)}
  return out


def _setting_config(config, dataset, max_train):
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset, c.max_train, c.noise_type, c.linearize = dataset, max_train, "uniform", "last_layer"
  return c


def summarize(rows):
  """Per (dataset, detector): mean and std over seeds of test error, gap, F1 and removed."""
  cells = {}
  for r in rows:
    for name, v in r["detectors"].items():
      cells.setdefault((r["dataset"], name), []).append(v)
  out = []
  for (dataset, name), vs in cells.items():
    cell = {"dataset": dataset, "detector": name, "seeds": len(vs)}
    for key in ("test_error", "gap", "f1", "removed"):
      vals = [v[key] for v in vs]
      cell[f"{key}_mean"], cell[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
    out.append(cell)
  return out


def summarize_errors(rows):
  """Per (dataset, group) of `_error_profile`: the means over seeds."""
  cells = {}
  for r in rows:
    for group, v in r.get("default_errors", {}).items():
      cells.setdefault((r["dataset"], group), []).append(v)
  out = []
  for (dataset, group), vs in cells.items():
    cell = {"dataset": dataset, "group": group}
    for key in ("count", "loo_p_given", "clean_model_p_true", "clean_model_correct"):
      vals = [v[key] for v in vs if v[key] is not None]
      cell[key] = float(np.mean(vals)) if vals else float("nan")
    out.append(cell)
  return out


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  validate(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)  # written at its first stage
  rows = []
  for dataset, max_train in common.check_settings(config):
    c = _setting_config(config, dataset, max_train)
    sub = common.setting_workdir(workdir, wd, config, c, dataset, max_train)
    pairwise = any(d in _RBF + _KNN for d in c.detectors)

    def check(labels, c=c):  # before anything is written
      if pairwise and len(labels) > int(c.rbf_max_n):
        raise ConfigError(f"the rbf_kernel / knn_disagreement detectors build [n, n] "
                          f"matrices: n = {len(labels)} > rbf_max_n = {c.rbf_max_n}; drop "
                          "them or raise rbf_max_n.")

    train, test = common.prepare_features(c, sub, check)
    x = train.features
    kernel = neighbours = None
    if pairwise:
      with jax.enable_x64(True):  # float64 kernel and distances
        x64 = np.asarray(x, np.float64)
        kernel = np.asarray(diva_jax.rbf_kernel(x64, bandwidth=float(c.rbf_bandwidth)))
        d2 = np.array(diva_jax.squared_distances(x64))
      np.fill_diagonal(d2, np.inf)
      neighbours = np.argsort(d2, 1, kind="stable")[:, :int(c.knn)]
      del d2
    x_views = None
    if "shift_views" in c.detectors:
      c.detection_views = True
      x_views = common.detection_features(c, train, sub)
    for seed in range(int(config.seeds)):
      r = wd.stage_json(f"{dataset}_{max_train}_seed{seed}", lambda: _one_seed(
          c, x, train.labels, test.features, test.labels, len(train.class_names), seed,
          kernel, neighbours, x_views), collective=False)
      rows.append({"dataset": dataset, **r})
  wd.write_json("results.json", rows)
  summary = summarize(rows)
  wd.write_csv("summary.csv", {k: [s[k] for s in summary] for k in summary[0]})
  profile = summarize_errors(rows)
  if profile:
    wd.write_csv("error_profile.csv", {k: [p[k] for p in profile] for k in profile[0]})
  if common.is_main_process():
    print("dataset | detector | test error % | gap to oracle removal | F1 | removed "
          "(mean +- std over seeds)")
    for s in summary:
      print(f"{s['dataset']} | {s['detector']} | " + " | ".join(
          f"{s[k + '_mean']:.3f} +- {s[k + '_std']:.3f}"
          for k in ("test_error", "gap", "f1", "removed")))
    if profile:
      print("dataset | the default's group | count | LOO p(given label) | clean-label "
            "model: LOO p(true label) | share it classifies right (means over seeds)")
      for p in profile:
        print(f"{p['dataset']} | {p['group']} | {p['count']:.1f} | {p['loo_p_given']:.3f} | "
              f"{p['clean_model_p_true']:.3f} | {p['clean_model_correct']:.2f}")
  metrics = {"runs": rows, "summary": summary, "error_profile": profile}
  wd.write_json("metrics.json", metrics)
  return metrics
