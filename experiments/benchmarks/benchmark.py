"""Speed benchmark: the LOO value + dataset derivative against its peers.

Primal (features [n, d], c outputs), for each n:
  * ours: `diva_jax.loo_loss_and_derivative` on NumPy arrays (the call a user makes,
    boundary checks included), float64 and float32 [and, with `xla=True`, backend="xla"];
  * scikit-learn RidgeCV's exact LOO values (fit_intercept=False, sample weights, same reg),
    float64: the value alone, no gradient;
  * plain `jax.jit(jax.value_and_grad(diva_jax.reference_loo_loss))`, float64 and float32;
  * brute-force refits (n refits; a few timed, extrapolated to n);
  * the machine's matrix-multiply rate at this size, so the fraction of peak reached by the
    derivative's arithmetic can be reported.
Dual (kernel [n, n], float64): ours value, ours value + gradient, one Cholesky (XLA's and
LAPACK's; the faster is the reference). Streamed primal at a large n (float32, features in
memory) with its peak memory.

Fairness. Every contender is timed alone, in a state that favours it: a warm-up call, then
`repeats` timed calls (median reported), with no other contender's thread pools around.
With isolation="process" (the default) each contender runs in a fresh Python process; with
isolation="pause" they run one after another in this process, after a `pause_s` sleep (so
that the previous contender's OpenBLAS threads stop spinning: NumPy's and SciPy's OpenBLAS
are two pools, and a call into one while the other spins runs 20-50% slower on 2 cores, see
BUILD.md). `round_robin=True` also times the primal contenders interleaved in this process
(the old protocol, whose order slowed scikit-learn), recorded next to the "alone" figures.
Every timed call is in the JSON.

JAX's float64 flag is never changed globally: float64 work runs under `jax.enable_x64(True)`
(fresh worker processes set it for themselves), the float32 streamed run under
`jax.enable_x64(False)`.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import diva_jax
from diva_jax import io_utils
import scipy.linalg

PRIMAL_CONTENDERS = ("sklearn_f64", "ours_f64", "ours_f32", "autodiff_f64", "autodiff_f32")
DUAL_CONTENDERS = ("cholesky_xla", "cholesky_lapack", "ours_value", "ours_value_grad")
ISOLATIONS = ("process", "pause")
from experiments.lib import ROOT as _REPO
from experiments.lib import records_run


# ----------------------------------------------------------------------------------------
# Problems (deterministic in (kind, n, seed): a worker process rebuilds the same arrays).
# ----------------------------------------------------------------------------------------


def primal_problem(n: int, d: int, c: int, seed: int, dtype=np.float64):
  """(z [n, d], y [n, c] one-hot, a [n] in [0.5, 1.5], reg = 0.1 n: well conditioned)."""
  rng = np.random.default_rng([seed, n, d, c])
  z = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
  y = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
  a = rng.uniform(0.5, 1.5, n).astype(dtype)
  return z, y, a, float(0.1 * n)


def dual_problem(n: int, c: int, seed: int):
  """(kernel [n, n] = Z Z^T with d = n / 4, y, a, reg = 0.1 mean diagonal), float64."""
  z, y, a, _ = primal_problem(n, max(8, n // 4), c, seed)
  kern = z @ z.T
  return kern, y, a, 0.1 * float(np.trace(kern)) / n


def primal_flops(n: int, d: int, on_cpu: bool) -> float:
  """Value + gradient: on CPU (diva_jax's host path) two syrk, one trsm, one trmm; the XLA
  path (GPU/TPU) spends one more n d^2 (a GEMM instead of the trmm)."""
  return (4.0 if on_cpu else 5.0) * n * d * d + d ** 3 / 3.0


def _sklearn_ridge(z, y, a, reg):
  from sklearn.linear_model import RidgeCV
  return RidgeCV(alphas=[reg], fit_intercept=False, store_cv_results=True,
                 scoring="neg_mean_squared_error").fit(z, y, sample_weight=a)


# ----------------------------------------------------------------------------------------
# Contenders: name -> a no-argument callable that runs one timed call.
# ----------------------------------------------------------------------------------------


def _contender(kind: str, name: str, n: int, d: int, c: int, seed: int) -> Callable[[], object]:
  """Builds the problem and returns the contender's call (needs float64 enabled)."""
  if kind == "primal":
    if name == "sklearn_f64":
      z, y, a, reg = primal_problem(n, d, c, seed)
      return lambda: _sklearn_ridge(z, y, a, reg)
    prefix, dt = name.rsplit("_", 1)
    dtype = {"f64": np.float64, "f32": np.float32}[dt]
    z, y, a, reg = primal_problem(n, d, c, seed, dtype)
    if prefix in ("ours", "ours_xla"):
      backend = "xla" if prefix == "ours_xla" else "auto"
      if backend == "xla":  # the compiled path on device arrays, as a jit user has them
        z, y, a = (jax.device_put(v) for v in (z, y, a))
      return lambda: jax.block_until_ready(diva_jax.loo_loss_and_derivative(
          a, y, features=z, reg=reg, loss="mse", backend=backend))
    if prefix == "autodiff":
      vg = jax.jit(jax.value_and_grad(
          lambda w, t, x: diva_jax.reference_loo_loss(w, t, features=x, reg=reg)))
      zj, yj, aj = (jnp.asarray(v) for v in (z, y, a))
      return lambda: jax.block_until_ready(vg(aj, yj, zj))
  elif kind == "dual":
    kern, y, a, reg = dual_problem(n, c, seed)
    if name == "cholesky_xla":
      chol = jax.jit(jnp.linalg.cholesky)
      kj = jnp.asarray(kern + reg * np.eye(n))
      return lambda: jax.block_until_ready(chol(kj))
    if name == "cholesky_lapack":
      kr = kern + reg * np.eye(n)
      return lambda: scipy.linalg.cholesky(kr, lower=True, overwrite_a=False, check_finite=False)
    if name == "ours_value":
      return lambda: jax.block_until_ready(diva_jax.loo_loss(a, y, kernel=kern, reg=reg))
    if name == "ours_value_grad":
      return lambda: jax.block_until_ready(diva_jax.loo_loss_and_derivative(
          a, y, kernel=kern, reg=reg))
  elif kind == "matmul":  # the GEMM Z^T W, W [n, d] (not a Gram: BLAS could halve that)
    dtype = {"f64": np.float64, "f32": np.float32}[name.rsplit("_", 1)[1]]
    z = primal_problem(n, d, 1, seed, dtype)[0]
    w = np.ascontiguousarray(z[::-1])
    if name.startswith("matmul_xla"):
      mm = jax.jit(lambda u, v: u.T @ v)
      zj, wj = jnp.asarray(z), jnp.asarray(w)
      return lambda: jax.block_until_ready(mm(zj, wj))
    return lambda: z.T @ w
  raise ValueError(f"unknown contender {kind}/{name}")


def _time_calls(fn: Callable[[], object], repeats: int, pause_s: float) -> dict:
  """Pause, one warm-up call (compilation, thread pools), then `repeats` timed calls."""
  time.sleep(pause_s)
  start = time.perf_counter()
  fn()
  warmup = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"warmup_s": warmup, "times_s": times, "median_s": float(np.median(times))}


def _time_here(kind, name, n, d, c, seed, repeats, pause_s) -> dict:
  with jax.enable_x64(True):
    fn = _contender(kind, name, n, d, c, seed)
    return _time_calls(fn, repeats, pause_s)


def _worker_main() -> None:
  """Entry of a fresh worker process: spec JSON in argv[1], result JSON to argv[2]."""
  jax.config.update("jax_enable_x64", True)  # this process only
  spec = json.loads(sys.argv[1])
  res = _time_here(**spec)
  res["pid"] = os.getpid()
  with open(sys.argv[2], "w") as f:
    json.dump(res, f)


def time_contender(kind: str, name: str, *, n: int, d: int = 0, c: int = 1, seed: int = 0,
                   repeats: int = 3, isolation: str = "process", pause_s: float = 1.0) -> dict:
  """{'warmup_s', 'times_s', 'median_s'} of one contender timed alone (module docstring)."""
  if isolation not in ISOLATIONS:
    raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}.")
  spec = dict(kind=kind, name=name, n=n, d=d, c=c, seed=seed, repeats=repeats,
              pause_s=pause_s)
  if isolation == "pause":
    return _time_here(**spec)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH")) if p)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    proc = subprocess.run(
        [sys.executable, "-c", "from experiments.benchmarks import benchmark; benchmark._worker_main()",
         json.dumps(spec), out], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"benchmark worker {kind}/{name} n={n} failed:\n{proc.stderr[-3000:]}")
    with open(out) as f:
      return json.load(f)


def _round_robin(names, n, d, c, seed, repeats) -> dict:
  """The old protocol: all contenders in this process, timed interleaved after one warm-up
  each (the order can slow a contender that runs right after another's spinning pools)."""
  with jax.enable_x64(True):
    fns = {name: _contender("primal", name, n, d, c, seed) for name in names}
    for fn in fns.values():
      fn()
    times = {name: [] for name in names}
    for _ in range(repeats):
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
  return {name: {"times_s": t, "median_s": float(np.median(t))} for name, t in times.items()}


# ----------------------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------------------


def bench_primal(n: int, d: int, c: int, *, repeats: int, seed: int = 0,
                 isolation: str = "process", pause_s: float = 1.0,
                 autodiff_max_n: int = 20000, brute_force_refits: int = 3,
                 round_robin: bool = False, xla: bool = False) -> dict:
  """One primal size: every contender timed alone, then accuracy checks and brute force."""
  names = [m for m in PRIMAL_CONTENDERS if not m.startswith("autodiff") or n <= autodiff_max_n]
  if xla:
    names.append("ours_xla_f64")
  timer = functools.partial(time_contender, n=n, d=d, c=c, seed=seed, isolation=isolation,
                            pause_s=pause_s)
  alone = {}
  for name in names:
    reps = max(1, repeats // 2) if name.startswith("autodiff") else repeats
    alone[name] = timer("primal", name, repeats=reps)
  on_cpu = jax.default_backend() == "cpu"
  flops = primal_flops(n, d, on_cpu)
  row = {"n": n, "d": d, "c": c, "reg": float(0.1 * n), "flops_value_and_grad": flops,
         "isolation": isolation, "pause_s": pause_s, "repeats": repeats, "alone": alone}
  sk = alone["sklearn_f64"]["median_s"]
  row["sklearn_f64_s"] = sk
  for name in names[1:]:
    row[f"{name}_s"] = alone[name]["median_s"]
    row[f"{name}_ratio_to_sklearn"] = alone[name]["median_s"] / sk

  for dt in ("f64", "f32"):
    rates = {impl: timer("matmul", f"matmul_{impl}_{dt}", repeats=3)["median_s"]
             for impl in ("numpy", "xla")}
    rate = 2.0 * n * d * d / min(rates.values())
    row[f"matmul_{dt}_gflops"] = rate / 1e9
    row[f"matmul_{dt}_s"] = rates
    row[f"ours_{dt}_fraction_of_matmul_rate"] = flops / row[f"ours_{dt}_s"] / rate

  if round_robin:
    rr = _round_robin(names, n, d, c, seed, repeats)
    row["round_robin"] = rr
    for name in names[1:]:
      row["round_robin"][name]["ratio_to_sklearn"] = (rr[name]["median_s"]
                                                     / rr["sklearn_f64"]["median_s"])

  with jax.enable_x64(True):  # accuracy, untimed: ours vs scikit-learn, float32 vs float64
    z, y, a, reg = primal_problem(n, d, c, seed)
    sk_loo = _sklearn_ridge(z, y, a, reg).cv_results_[:, :, 0]
    preds = np.asarray(diva_jax.loo_predictions(a, y, features=z, reg=reg))
    row["max_abs_diff_loo_vs_sklearn"] = float(np.max(np.abs(preds - sk_loo)))
    v64, g64 = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=reg)
    f32 = [v.astype(np.float32) for v in (a, y, z)]
    v32, g32 = diva_jax.loo_loss_and_derivative(*f32[:2], features=f32[2], reg=reg)
    g64 = np.asarray(g64)
    row["f32_rel_err_value"] = abs(float(v32) - float(v64)) / abs(float(v64))
    row["f32_rel_err_grad"] = float(np.linalg.norm(np.asarray(g32, np.float64) - g64)
                                    / np.linalg.norm(g64))

    # Brute force: n refits of the weighted normal equations (NumPy, float64).
    k = max(1, brute_force_refits)
    start = time.perf_counter()
    for i in range(k):
      b = a.copy()
      b[i] = 0.0
      np.linalg.solve(z.T @ (b[:, None] * z) + reg * np.eye(d), z.T @ (b[:, None] * y))
    row["brute_force_s_extrapolated"] = (time.perf_counter() - start) / k * n
  return row


def bench_dual(n: int, c: int, *, repeats: int, seed: int = 0, isolation: str = "process",
               pause_s: float = 1.0) -> dict:
  """One kernel size, float64: ours against one Cholesky (the faster of XLA's, LAPACK's)."""
  alone = {name: time_contender("dual", name, n=n, c=c, seed=seed, repeats=repeats,
                                isolation=isolation, pause_s=pause_s)
           for name in DUAL_CONTENDERS}
  chol = min(alone["cholesky_xla"]["median_s"], alone["cholesky_lapack"]["median_s"])
  row = {"n": n, "c": c, "isolation": isolation, "repeats": repeats, "alone": alone,
         "cholesky_s": chol,
         "ours_value_s": alone["ours_value"]["median_s"],
         "ours_value_grad_s": alone["ours_value_grad"]["median_s"]}
  row["value_over_cholesky"] = row["ours_value_s"] / chol
  row["value_grad_over_cholesky"] = row["ours_value_grad_s"] / chol
  return row


def bench_streamed(n: int, d: int, c: int, block: int, seed: int = 0) -> dict:
  """Streamed primal, float32, features in memory; peak RSS of this process."""
  rng = np.random.default_rng([seed, n, d, c, 1])
  z = np.empty((n, d), np.float32)
  for s in range(0, n, 65536):  # fill in blocks: no float64 temporary of the whole matrix
    z[s:s + 65536] = rng.standard_normal((min(65536, n - s), d), dtype=np.float32)
  y = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
  a = rng.uniform(0.5, 1.5, n).astype(np.float32)
  reg = float(0.1 * n)
  with jax.enable_x64(False):
    start = time.perf_counter()
    value, deriv = diva_jax.streamed_loo_loss_and_derivative(a, y, features=z, reg=reg,
                                                             block_size=block)
    elapsed = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  flops = 4.0 * n * d * d  # two syrk, one trsm, one trmm (the host stream passes)
  m = min(n, 65536)
  w = np.ascontiguousarray(z[:m][::-1])
  t_mm = _time_calls(lambda: z[:m].T @ w, 3, 0.0)["median_s"]
  rate = 2.0 * m * d * d / t_mm
  return {"n": n, "d": d, "c": c, "block_size": block, "seconds": elapsed,
          "loss": float(value), "feature_matrix_bytes": z.nbytes, "peak_rss_bytes": peak,
          "peak_over_features": peak / z.nbytes, "matmul_f32_gflops": rate / 1e9,
          "fraction_of_matmul_rate": flops / elapsed / rate,
          "finite": bool(np.all(np.isfinite(np.asarray(deriv))))}


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------


def primal_line(row: dict) -> str:
  get = lambda k: row.get(k, float("nan"))
  line = (f"primal n={row['n']} d={row['d']} c={row['c']} (alone, {row['isolation']}): sklearn "
          f"{row['sklearn_f64_s']:.3f}s | ours f64 {row['ours_f64_s']:.3f}s "
          f"({row['ours_f64_ratio_to_sklearn']:.2f}x, "
          f"{row['ours_f64_fraction_of_matmul_rate']:.0%} of matmul) | ours f32 "
          f"{row['ours_f32_s']:.3f}s ({row['ours_f32_ratio_to_sklearn']:.2f}x, "
          f"{row['ours_f32_fraction_of_matmul_rate']:.0%}, rel err grad "
          f"{row['f32_rel_err_grad']:.1e}) | jax.grad f64 "
          f"{get('autodiff_f64_ratio_to_sklearn'):.2f}x f32 "
          f"{get('autodiff_f32_ratio_to_sklearn'):.2f}x | brute force "
          f"{row['brute_force_s_extrapolated']:.0f}s")
  if "ours_xla_f64_s" in row:
    line += f" | ours backend=xla f64 {row['ours_xla_f64_ratio_to_sklearn']:.2f}x"
  if "round_robin" in row:
    rr = row["round_robin"]
    line += (f"\n  round-robin in one process: sklearn {rr['sklearn_f64']['median_s']:.3f}s | "
             f"ours f64 {rr['ours_f64']['median_s']:.3f}s "
             f"({rr['ours_f64']['ratio_to_sklearn']:.2f}x) | ours f32 "
             f"{rr['ours_f32']['median_s']:.3f}s ({rr['ours_f32']['ratio_to_sklearn']:.2f}x)")
  return line


@records_run
def run(workdir: str, *, sizes: Sequence[int] = (2000, 5000, 20000), d: int = 1280,
        c: int = 10, repeats: int = 7, brute_force_refits: int = 3,
        autodiff_max_n: int = 20000, dual_sizes: Sequence[int] = (10000,),
        dual_repeats: int = 1, streamed_n: int = 1_000_000, streamed_d: int = 1024,
        streamed_c: int = 100, streamed_block: int = 32768, seed: int = 0,
        isolation: str = "process", pause_s: float = 1.0, round_robin: bool = False,
        xla: bool = False) -> dict:
  """Runs the sections; returns the results (also <workdir>/benchmark.json, rewritten
  atomically after each size). The streamed run's peak memory is this process's peak RSS:
  run it alone (sizes=(), dual_sizes=()) for a figure that only it determines."""
  if isolation not in ISOLATIONS:
    raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}.")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "benchmark.json")
  out = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "isolation": isolation, "pause_s": pause_s, "primal": [], "dual": [],
         "streamed": None}
  for n in sizes:
    row = bench_primal(int(n), d, c, repeats=repeats, seed=seed, isolation=isolation,
                       pause_s=pause_s, autodiff_max_n=autodiff_max_n,
                       brute_force_refits=brute_force_refits, round_robin=round_robin, xla=xla)
    out["primal"].append(row)
    print(primal_line(row), flush=True)
    io_utils.atomic_write_json(path, out)
  for n in dual_sizes:
    row = bench_dual(int(n), c, repeats=dual_repeats, seed=seed, isolation=isolation,
                     pause_s=pause_s)
    out["dual"].append(row)
    print(f"dual n={n}: cholesky {row['cholesky_s']:.3f}s | value {row['ours_value_s']:.3f}s "
          f"({row['value_over_cholesky']:.1f}x) | value+grad {row['ours_value_grad_s']:.3f}s "
          f"({row['value_grad_over_cholesky']:.1f}x)", flush=True)
    io_utils.atomic_write_json(path, out)
  if streamed_n:
    row = bench_streamed(streamed_n, streamed_d, streamed_c, streamed_block, seed)
    out["streamed"] = row
    print(f"streamed n={row['n']} d={row['d']} c={row['c']} f32: {row['seconds']:.1f}s, peak "
          f"RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB = {row['peak_over_features']:.2f}x the "
          f"features, {row['fraction_of_matmul_rate']:.0%} of matmul", flush=True)
    io_utils.atomic_write_json(path, out)
  print(f"wrote {path}")
  return out
