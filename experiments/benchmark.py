r"""Benchmark: LOO value + dataset derivative against its peers, in one process and run.

For each size, measured in the same run (medians over --repeats, contenders timed
round-robin so that the machine's drift hits them alike):
  * diva_jax value + gradient (`diva_jax.loo_loss_and_derivative` on NumPy arrays, the call
    a user makes, boundary checks included), float64 and float32;
  * scikit-learn RidgeCV's exact LOO values (fit_intercept=False, sample weights, same reg),
    float64: the value alone, no gradient;
  * plain jax.value_and_grad through the reference closed form;
  * brute-force refits (n refits; a few timed, extrapolated to n);
  * the machine's measured matrix-multiply rate (Z^T Z at this size), so the fraction of
    peak reached by the derivative's arithmetic can be reported.
Then the dual form (n x n kernel, float64) against one Cholesky of the kernel, and the
streamed primal form at a large n (features in memory, float32) with its peak memory.

  python -m experiments.benchmark --workdir=/tmp/bench
  python -m experiments.benchmark --workdir=/tmp/bench --sizes=5000,20000 --streamed_n=1000000

Writes <workdir>/benchmark.json (atomically) and prints a table. The streamed run's peak
memory is the process's peak RSS: run it alone (--sizes= --dual_sizes=) for a figure that
only it determines.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import diva_jax

flags.DEFINE_string("workdir", None, "Where benchmark.json is written.", required=True)
flags.DEFINE_list("sizes", ["2000", "5000", "20000"], "Primal sample counts n.")
flags.DEFINE_integer("d", 1280, "Feature dimension of the primal runs.")
flags.DEFINE_integer("c", 10, "Number of outputs (classes).")
flags.DEFINE_integer("repeats", 7, "Timed repeats of the primal contenders, round-robin "
                     "(medians reported).")
flags.DEFINE_integer("brute_force_refits", 3, "Refits timed for the brute-force estimate.")
flags.DEFINE_integer("autodiff_max_n", 20000, "Largest n for the plain-autodiff peer.")
flags.DEFINE_list("dual_sizes", ["10000"], "Kernel sizes n for the dual form (float64).")
flags.DEFINE_integer("dual_repeats", 1, "Timed repeats of the dual form (it is slow).")
flags.DEFINE_integer("streamed_n", 1_000_000, "Rows for the streamed run (0 skips it).")
flags.DEFINE_integer("streamed_d", 1024, "Features of the streamed run.")
flags.DEFINE_integer("streamed_c", 100, "Outputs of the streamed run.")
flags.DEFINE_integer("streamed_block", 32768, "Rows per block in the streamed run.")
flags.DEFINE_integer("seed", 0, "Data seed.")

FLAGS = flags.FLAGS


def _median_time(fn, repeats):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _problem(n, d, c, rng, dtype=np.float64):
  z = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
  y = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
  a = rng.uniform(0.5, 1.5, n).astype(dtype)
  reg = float(0.1 * n)  # ~ 0.1 x mean eigenvalue scale of Z^T Z / d: well conditioned
  return z, y, a, reg


def _matmul_rate(z):
  """The machine's matrix-multiply rate in flop/s: the faster of XLA's and NumPy's
  (OpenBLAS) GEMM Z^T W with W [n, d] (a general product, not a Gram, which BLAS could do
  at half the flops)."""
  z = np.asarray(z)
  w = np.asarray(z[::-1])
  zj, wj = jnp.asarray(z), jnp.asarray(w)
  mm = jax.jit(lambda a, b: a.T @ b)
  t_xla = _median_time(lambda: jax.block_until_ready(mm(zj, wj)), 3)
  t_np = _median_time(lambda: z.T @ w, 3)
  n, d = z.shape
  return 2.0 * n * d * d / min(t_xla, t_np)


def _interleaved_medians(fns, repeats):
  """Median seconds of each of `fns` (a dict), timed round-robin after one warm-up call
  each: the machine's drift (other tenants, clock) hits every contender alike."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return ({name: float(np.median(t)) for name, t in times.items()},
          {name: [round(x, 4) for x in t] for name, t in times.items()})


def bench_primal(n, d, c, repeats, rng):
  from sklearn.linear_model import RidgeCV
  from diva_jax import loo

  z, y, a, reg = _problem(n, d, c, rng)
  row = {"n": n, "d": d, "c": c, "reg": reg}
  ridge = lambda: RidgeCV(alphas=[reg], fit_intercept=False, store_cv_results=True,
                          scoring="neg_mean_squared_error").fit(z, y, sample_weight=a)
  sk_loo = ridge().cv_results_[:, :, 0]
  # Host path on CPU (diva_jax._host): two syrk, one trsm, one trmm; the XLA path (GPU/TPU)
  # spends one more n d^2 (a GEMM instead of the trmm).
  on_cpu = jax.devices()[0].platform == "cpu"
  flops = (4.0 if on_cpu else 5.0) * n * d * d + d ** 3 / 3.0
  row["flops_value_and_grad"] = flops

  # Ours: the public call a user makes, on NumPy arrays (boundary checks included).
  args = {}
  fns = {"sklearn_f64": ridge}
  for dt, name in ((np.float64, "f64"), (np.float32, "f32")):
    args[name] = (a.astype(dt), y.astype(dt), z.astype(dt))
    fns[f"ours_{name}"] = functools.partial(
        lambda xs: jax.block_until_ready(diva_jax.loo_loss_and_derivative(
            xs[0], xs[1], features=xs[2], reg=reg, loss="mse")), args[name])
  medians, all_times = _interleaved_medians(fns, repeats)
  row["times_s"] = all_times
  row["sklearn_f64_s"] = medians["sklearn_f64"]
  ref64 = None
  for dt, name in ((np.float64, "f64"), (np.float32, "f32")):
    row[f"ours_{name}_s"] = medians[f"ours_{name}"]
    value, grad = fns[f"ours_{name}"]()
    row[f"ours_{name}_ratio_to_sklearn"] = row[f"ours_{name}_s"] / row["sklearn_f64_s"]
    rate = _matmul_rate(np.asarray(z, dt))
    row[f"matmul_{name}_gflops"] = rate / 1e9
    row[f"ours_{name}_fraction_of_matmul_rate"] = flops / row[f"ours_{name}_s"] / rate
    if dt == np.float64:
      ref64 = (float(value), np.asarray(grad))
      preds = diva_jax.loo_predictions(args[name][0], args[name][1], features=args[name][2],
                                       reg=reg)
      row["max_abs_diff_loo_vs_sklearn"] = float(np.max(np.abs(np.asarray(preds) - sk_loo)))
    else:
      row["f32_rel_err_value"] = abs(float(value) - ref64[0]) / abs(ref64[0])
      row["f32_rel_err_grad"] = float(np.linalg.norm(np.asarray(grad, np.float64) - ref64[1])
                                      / np.linalg.norm(ref64[1]))
    if n <= FLAGS.autodiff_max_n:
      vg = jax.jit(jax.value_and_grad(loo._loo_loss_reference), static_argnums=(6, 7))
      xs = tuple(jnp.asarray(v) for v in args[name]) + (jnp.asarray(reg, dt),
                                                         jnp.ones(n, dt), jnp.asarray(1.0, dt))
      row[f"autodiff_{name}_s"] = _median_time(
          lambda: jax.block_until_ready(vg(*xs, "primal", "mse")), max(1, repeats // 2))
      row[f"autodiff_{name}_ratio_to_sklearn"] = row[f"autodiff_{name}_s"] / row["sklearn_f64_s"]

  # Brute force: n refits of the weighted normal equations (numpy, float64).
  k = max(1, FLAGS.brute_force_refits)
  start = time.perf_counter()
  for i in range(k):
    b = a.copy()
    b[i] = 0.0
    np.linalg.solve(z.T @ (b[:, None] * z) + reg * np.eye(d), z.T @ (b[:, None] * y))
  row["brute_force_s_extrapolated"] = (time.perf_counter() - start) / k * n
  return row


def bench_dual(n, c, repeats, rng):
  from diva_jax import loo

  z, y, a, _ = _problem(n, max(8, n // 4), c, rng)
  kern = z @ z.T
  reg = 0.1 * float(np.trace(kern)) / n
  args = (jnp.asarray(a), jnp.asarray(y), jnp.asarray(kern), jnp.asarray(reg), jnp.ones(n),
          jnp.asarray(1.0))
  chol = jax.jit(jnp.linalg.cholesky)
  kj = jnp.asarray(kern) + reg * jnp.eye(n)
  row = {"n": n, "c": c}
  row["cholesky_s"] = _median_time(lambda: jax.block_until_ready(chol(kj)), repeats)
  row["ours_value_grad_s"] = _median_time(
      lambda: jax.block_until_ready(loo._loo_value_and_grad_jit(*args, form="dual", loss="mse")),
      repeats)
  row["ours_value_s"] = _median_time(
      lambda: jax.block_until_ready(loo._loo_loss_cvjp(*args, "dual", "mse")), repeats)
  row["value_grad_over_cholesky"] = row["ours_value_grad_s"] / row["cholesky_s"]
  row["value_over_cholesky"] = row["ours_value_s"] / row["cholesky_s"]
  return row


def bench_streamed(n, d, c, block, rng):
  from diva_jax import streaming

  z = np.empty((n, d), np.float32)
  for s in range(0, n, 65536):  # fill in blocks: no float64 temporary of the whole matrix
    z[s:s + 65536] = rng.standard_normal((min(65536, n - s), d), dtype=np.float32)
  y = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
  a = rng.uniform(0.5, 1.5, n).astype(np.float32)
  reg = float(0.1 * n)
  start = time.perf_counter()
  res = streaming.streamed_loo_loss_and_derivative(a, y, z, reg=reg, block_size=block)
  elapsed = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  flops = 4.0 * n * d * d  # two syrk, one trsm, one trmm (diva_jax._host stream passes)
  rate = _matmul_rate(z[: min(n, 65536)])
  return {"n": n, "d": d, "c": c, "block_size": block, "seconds": elapsed,
          "loss": res.loss, "feature_matrix_bytes": z.nbytes, "peak_rss_bytes": peak,
          "peak_over_features": peak / z.nbytes, "matmul_f32_gflops": rate / 1e9,
          "fraction_of_matmul_rate": flops / elapsed / rate,
          "finite": bool(np.all(np.isfinite(res.derivative)))}


def _write_json(path, obj):
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def main(argv):
  del argv
  jax.config.update("jax_enable_x64", True)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  rng = np.random.default_rng(FLAGS.seed)
  out = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
         "jax": jax.__version__, "primal": [], "dual": [], "streamed": None}
  path = os.path.join(FLAGS.workdir, "benchmark.json")
  for n in [int(s) for s in FLAGS.sizes if s]:
    row = bench_primal(n, FLAGS.d, FLAGS.c, FLAGS.repeats, rng)
    out["primal"].append(row)
    print(f"primal n={n} d={FLAGS.d} c={FLAGS.c}: sklearn {row['sklearn_f64_s']:.3f}s | ours f64 "
          f"{row['ours_f64_s']:.3f}s ({row['ours_f64_ratio_to_sklearn']:.2f}x, "
          f"{row['ours_f64_fraction_of_matmul_rate']:.0%} of matmul) | ours f32 "
          f"{row['ours_f32_s']:.3f}s ({row['ours_f32_ratio_to_sklearn']:.2f}x, rel err grad "
          f"{row['f32_rel_err_grad']:.1e}) | autodiff f64 "
          f"{row.get('autodiff_f64_ratio_to_sklearn', float('nan')):.2f}x | brute force "
          f"{row['brute_force_s_extrapolated']:.0f}s", flush=True)
    _write_json(path, out)
  for n in [int(s) for s in FLAGS.dual_sizes if s]:
    row = bench_dual(n, FLAGS.c, FLAGS.dual_repeats, rng)
    out["dual"].append(row)
    print(f"dual n={n}: cholesky {row['cholesky_s']:.3f}s | value {row['ours_value_s']:.3f}s "
          f"({row['value_over_cholesky']:.1f}x) | value+grad {row['ours_value_grad_s']:.3f}s "
          f"({row['value_grad_over_cholesky']:.1f}x)", flush=True)
    _write_json(path, out)
  if FLAGS.streamed_n:
    jax.config.update("jax_enable_x64", False)
    row = bench_streamed(FLAGS.streamed_n, FLAGS.streamed_d, FLAGS.streamed_c,
                         FLAGS.streamed_block, rng)
    out["streamed"] = row
    print(f"streamed n={row['n']} d={row['d']} c={row['c']} f32: {row['seconds']:.1f}s, peak RSS "
          f"{row['peak_rss_bytes'] / 2**30:.2f} GiB = {row['peak_over_features']:.2f}x the features, "
          f"{row['fraction_of_matmul_rate']:.0%} of matmul", flush=True)
    _write_json(path, out)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
