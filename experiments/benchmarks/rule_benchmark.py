"""The default label-issue rule at scale: streamed against in memory, the Gram floor,
scikit-learn's RidgeCV and cleanlab's 5-fold pipeline, in the same run.

Data: synthetic class-mean-plus-noise embeddings (d columns, c classes, `signal` the class
means' scale against unit noise), standardised, divided by sqrt(d), a column of ones, float32,
written block by block to a `.npy` in the workdir (never whole in memory); 20% uniform label
flips by default. Every contender runs in a fresh Python process on that file, so each one's
peak RSS (`ru_maxrss`, which counts the touched pages of a memory-mapped file) is its own:

  gram              X^T X alone, read in blocks of the file (the floor: no rule can do less)
  streamed_rule     `find_label_issues(labels, features=path, return_probs=False)`
  in_memory_rule    `find_label_issues(labels, features=np.load(path))` (up to max_in_memory)
  ridge_cv          scikit-learn's RidgeCV (efficient LOO over the same 46-value grid) on
                    the one-hot labels: LOO values only, no detection (up to max_ridge_cv)
  cleanlab_sgd      5-fold cross-validated SGD logistic regression (one epoch pass per fold,
                    scikit-learn's SGDClassifier, log loss), then cleanlab's
                    `find_label_issues` (up to max_cleanlab)

Metrics: seconds, peak RSS, and for the detectors F1 of their flags and AUROC of their
ranking against the planted flips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from diva_jax.app import common
from diva_jax.app.common import ConfigError

CONTENDERS = ("gram", "streamed_rule", "in_memory_rule", "ridge_cv", "cleanlab_sgd")

_CHILD = textwrap.dedent("""
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    name, path, labels_path, flips_path, block = sys.argv[1:6]
    block = int(block)
    y = np.load(labels_path)
    flips = np.load(flips_path)
    c = int(y.max()) + 1
    x = np.load(path, mmap_mode="r")
    out = {}
    start = time.perf_counter()
    if name == "gram":
      g = np.zeros((x.shape[1], x.shape[1]))
      for a in range(0, x.shape[0], block):
        z = np.asarray(x[a:a + block])
        g += z.T @ z
    elif name in ("streamed_rule", "in_memory_rule"):
      import diva_jax
      feats = path if name == "streamed_rule" else np.load(path)
      kw = dict(block_size=block, return_probs=False) if name == "streamed_rule" else {}
      r = diva_jax.find_label_issues(y, features=feats, num_classes=c, **kw)
      out.update(flagged=r.flagged, score=r.derivative, reg=r.reg)
    elif name == "ridge_cv":
      from sklearn.linear_model import RidgeCV
      xx = np.load(path)
      scale = float(np.einsum("ij,ij->", xx, xx, dtype=np.float64)) / len(xx)
      RidgeCV(alphas=np.logspace(-6, 3, 46) * scale, fit_intercept=False).fit(
          xx, np.eye(c, dtype=np.float32)[y])
    else:
      from cleanlab.filter import find_label_issues
      from sklearn.linear_model import SGDClassifier
      from sklearn.model_selection import cross_val_predict
      xx = np.load(path)
      probs = cross_val_predict(SGDClassifier(loss="log_loss", random_state=0, tol=1e-3,
                                              max_iter=20), xx, y, cv=5,
                                method="predict_proba")
      flagged = find_label_issues(y, probs, n_jobs=1)
      out.update(flagged=flagged, score=1.0 - probs[np.arange(len(y)), y])
    seconds = time.perf_counter() - start
    # This process's own high-water mark (VmHWM): getrusage's ru_maxrss would count the
    # parent's pages at fork, which survive exec on Linux.
    with open("/proc/self/status") as f:
      hwm = [ln for ln in f if ln.startswith("VmHWM:")]
    kib = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {"seconds": seconds, "peak_rss_gib": kib / 2**20}
    if "flagged" in out:
      from diva_jax.curation import detect
      f = np.asarray(out["flagged"], bool)
      res["f1"] = float(2 * np.sum(f & flips) / max(f.sum() + flips.sum(), 1))
      res["auroc"] = float(detect.auroc(np.asarray(out["score"], np.float64), flips))
      res["flagged"] = int(f.sum())
    print("RESULT " + json.dumps(res))
""")


def check_config(config) -> None:
  if not config.sizes:
    raise ConfigError("sizes must list at least one 'n:c' pair.")
  for spec in config.sizes:
    n, _, c = str(spec).partition(":")
    if not (n.isdigit() and c.isdigit() and int(n) >= 10 and int(c) >= 2):
      raise ConfigError(f"sizes entries must be 'n:c' with n >= 10 and c >= 2, got {spec!r}.")
  common.check_int(config, "dim", 1)
  common.check_float(config, "signal", low=0.0, low_open=True)
  common.check_float(config, "noise_rate", low=0.0, high=1.0, high_open=True)
  common.check_int(config, "block_size", 1)
  common.check_subset(config, "contenders", CONTENDERS)
  for name in ("max_in_memory", "max_ridge_cv", "max_cleanlab"):
    common.check_int(config, name, 0)
  common.check_int(config, "seed", 0)
  common.check_int(config, "timeout_s", 1)


def write_synthetic(path, n, d, c, signal, rate, seed, block=65536):
  """Writes features [n, d + 1] float32 to `path` block by block; returns (labels, flips)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(c, d)).astype(np.float32) * signal
  clean = rng.integers(0, c, n)
  noisy = clean.copy()
  flips = rng.random(n) < rate
  noisy[flips] = (clean[flips] + rng.integers(1, c, int(flips.sum()))) % c
  # The column scale of class means + unit noise, known in closed form: standardise exactly.
  mu = means.mean(0)
  sd = np.sqrt(means.var(0) + 1.0)
  tmp = path + ".tmp"
  out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d + 1))
  for a in range(0, n, block):
    b = min(a + block, n)
    z = means[clean[a:b]] + rng.standard_normal((b - a, d), dtype=np.float32)
    out[a:b, :d] = (z - mu) / sd / np.sqrt(d)
    out[a:b, d] = 1.0
  out.flush()
  del out
  os.replace(tmp, path)
  return noisy, flips


def _limit(config, name):
  return {"in_memory_rule": config.max_in_memory, "ridge_cv": config.max_ridge_cv,
          "cleanlab_sgd": config.max_cleanlab}.get(name, 0)


def run(config, workdir: str, *, overwrite: bool = False) -> list:
  """Every (size, contender) cell, each a resumable stage; writes results.json and
  metrics.json (with each contender's time over the Gram's) and prints the table."""
  check_config(config)
  wd = common.Workdir(workdir, config, overwrite=overwrite)
  rows = []
  for spec in config.sizes:
    n, c = (int(v) for v in str(spec).split(":"))
    wd.commit()
    os.makedirs(wd.file("data"), exist_ok=True)
    path = wd.file(os.path.join("data", f"n{n}_c{c}_d{config.dim}_signal{config.signal:g}_"
                                f"rate{config.noise_rate:g}_seed{config.seed}.npy"))
    lab, flp = path[:-4] + "_labels.npy", path[:-4] + "_flips.npy"
    if not all(os.path.exists(p) for p in (path, lab, flp)):
      labels, flips = write_synthetic(path, n, int(config.dim), c, float(config.signal),
                                      float(config.noise_rate), int(config.seed))
      np.save(lab, labels)
      np.save(flp, flips)
    for name in config.contenders:
      limit = _limit(config, name)
      if limit and n > limit:
        continue

      def compute(name=name):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, name, path, lab, flp, str(config.block_size)],
            capture_output=True, text=True, timeout=int(config.timeout_s))
        line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
          return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        return json.loads(line[-1][7:])
      r = wd.stage_json(f"n{n}_c{c}_{name}", compute)
      rows.append({"n": n, "d": int(config.dim) + 1, "classes": c, "contender": name, **r})
      print(f"n={n:>8} c={c:>5} {name:15} " + "  ".join(
          f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
          flush=True)
  for r in rows:
    gram = [g for g in rows if g["n"] == r["n"] and g["classes"] == r["classes"]
            and g["contender"] == "gram" and "seconds" in g]
    if gram and "seconds" in r:
      r["over_gram"] = r["seconds"] / gram[0]["seconds"]
  wd.write_json("results.json", rows)
  wd.write_json("metrics.json", {"rows": rows})
  return rows
