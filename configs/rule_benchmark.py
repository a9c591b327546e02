r"""The default label-issue rule at scale (docs/results.md, "The default rule at scale").

  python -m experiments.rule_benchmark --workdir=/tmp/diva/rule_benchmark

Synthetic class-mean-plus-noise embeddings at d = 1,280 (a 1,281st column of ones), 20%
uniform flips, n from 4,000 to 256,000 and c = 10 / 100 / 1,000, written to .npy files in
the workdir; each contender in a fresh process on the file (see
experiments/benchmarks/rule_benchmark.py). `:runlocal`: n = 4,000 and 16,000 at d = 64,
about a minute. `:imagenet`: n = 1.28 M, c = 1,000 against the Gram alone.
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.sizes = ("4000:10", "16000:10", "64000:10", "256000:10", "64000:100", "64000:1000")
  c.dim = 1280
  c.signal = 0.1                 # the class means' scale (unit noise per column)
  c.noise_rate = 0.2
  c.seed = 0
  c.block_size = 8192
  c.contenders = ("gram", "streamed_rule", "in_memory_rule", "ridge_cv", "cleanlab_sgd")
  c.max_in_memory = 64000        # larger n: the in-memory rule is not run (0: no limit)
  c.max_ridge_cv = 64000
  c.max_cleanlab = 256000
  c.timeout_s = 3600             # per contender and size
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.sizes, c.dim, c.signal = ("4000:10", "16000:10"), 64, 0.3


def _imagenet(c):
  # ImageNet's shape: 1.28 M rows, d = 1,280, c = 1,000 (a 6.6 GB float32 .npy); the peers
  # that hold the features in memory or train 5 folds are not run at this size.
  c.sizes, c.contenders = ("1280000:1000",), ("gram", "streamed_rule")


VARIANTS = {"runlocal": _runlocal, "imagenet": _imagenet}
