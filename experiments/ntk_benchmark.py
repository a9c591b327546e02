r"""Kernel-build benchmark: throughput and peak memory of each NTK implementation.

Compares diva_jax.empirical_ntk_fn ('structured', 'jacobian_contraction',
'ntk_vector_products') with the plain baseline people write by hand
(``jax.jacrev`` of the batch output, flattened, ``J1 @ J2.T``) on a flax MLP
(3 Dense layers of 256, tanh, 32-d inputs, 10 logits; the network of
neural-tangents' published timing) and a small two-conv-layer CNN, traced NTK,
float64, x2 = x1.

Throughput is n^2 / seconds (best of --repeats runs after compilation). Peak
memory is XLA's compiled-memory analysis of the jitted kernel (arguments +
outputs + temporaries), which on CPU is the buffer peak of the program.

Run (CPU, about 5 minutes on 2 cores):

  python -m experiments.ntk_benchmark --workdir=/tmp/ntk_bench

Results are written to WORKDIR/ntk_benchmark.json and printed as a table.
"""
import json
import os
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from diva_jax import ntk

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where to write ntk_benchmark.json.",
                    required=True)
flags.DEFINE_list("mlp_sizes", ["64", "256", "1024"], "n for the MLP.")
flags.DEFINE_list("cnn_sizes", ["32", "128", "256"], "n for the CNN.")
flags.DEFINE_integer("repeats", 3, "Timed runs per case (best is kept).")
flags.DEFINE_integer("max_baseline_n", 256,
                     "Skip the jacrev baseline and the Jacobian-holding "
                     "implementations above this n (their memory grows like "
                     "n * c * P).")
flags.DEFINE_integer("block_size", 256,
                     "Block size used for n above it (bounded memory).")


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = nn.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


def jacrev_baseline(apply_fn):
  """Plain jacrev of the batch output, flattened, J1 J2^T / c (traced)."""
  def kernel_fn(x1, x2, params):
    def jac(x):
      j = jax.jacrev(lambda p: apply_fn(p, x))(params)
      leaves = jax.tree_util.tree_leaves(j)
      n, c = leaves[0].shape[:2]
      return jnp.concatenate([l.reshape(n, c, -1) for l in leaves], -1)
    j1, j2 = jac(x1), jac(x2)
    c = j1.shape[1]
    return jnp.einsum("ikp,jkp->ij", j1, j2) / c
  return kernel_fn


def measure(kernel_fn, x, params, repeats):
  fn = jax.jit(lambda x, p: kernel_fn(x, x, p))
  t0 = time.perf_counter()
  compiled = fn.lower(x, params).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes)
  k = compiled(x, params)
  k.block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    compiled(x, params).block_until_ready()
    times.append(time.perf_counter() - t0)
  best = min(times)
  n = x.shape[0]
  return dict(seconds=best, compile_seconds=compile_s,
              samples2_per_second=n * n / best, peak_bytes=peak), k


def run(workdir, mlp_sizes, cnn_sizes, repeats, max_baseline_n, block_size):
  """Runs every case; returns the list of result rows (also written as JSON)."""
  jax.config.update("jax_enable_x64", True)
  models = {
      "mlp": (MLP(), (32,), mlp_sizes),
      "cnn": (CNN(), (8, 8, 3), cnn_sizes),
  }
  rows = []
  for name, (model, shape, sizes) in models.items():
    for n in sizes:
      x = jax.random.normal(jax.random.key(0), (n,) + shape, jnp.float64)
      params = jax.tree_util.tree_map(
          lambda v: v.astype(jnp.float64),
          jax.jit(model.init)(jax.random.key(1), x[:1]))
      n_params = sum(l.size for l in jax.tree_util.tree_leaves(params))
      bs = block_size if n > block_size else None
      cases = {"jacrev_baseline": jacrev_baseline(model.apply)}
      for impl in ntk.IMPLEMENTATIONS:
        cases[impl] = ntk.empirical_ntk_fn(model.apply, implementation=impl,
                                           block_size=bs)
      reference = None
      for impl, kernel_fn in cases.items():
        if n > max_baseline_n and impl != "structured":
          continue
        res, k = measure(kernel_fn, x, params, repeats)
        if reference is None:
          reference = k
        res.update(model=name, n=n, implementation=impl, block_size=bs,
                   n_params=n_params,
                   max_abs_diff_vs_first=float(jnp.abs(k - reference).max()))
        rows.append(res)
        print(f"{name:4s} n={n:5d} {impl:22s} {res['seconds']:9.4f} s "
              f"{res['samples2_per_second']:12.4g} n^2/s "
              f"peak {res['peak_bytes'] / 2**20 if res['peak_bytes'] else -1:9.1f} MiB "
              f"(compile {res['compile_seconds']:.1f} s, "
              f"diff {res['max_abs_diff_vs_first']:.1e})", flush=True)
  os.makedirs(workdir, exist_ok=True)
  out = dict(jax_version=jax.__version__, backend=jax.default_backend(),
             devices=str(jax.devices()[0]), float="float64", rows=rows)
  with open(os.path.join(workdir, "ntk_benchmark.json"), "w") as f:
    json.dump(out, f, indent=1)
  return rows


def main(argv):
  del argv
  run(FLAGS.workdir, [int(s) for s in FLAGS.mlp_sizes],
      [int(s) for s in FLAGS.cnn_sizes], FLAGS.repeats, FLAGS.max_baseline_n,
      FLAGS.block_size)


if __name__ == "__main__":
  app.run(main)
