"""The benchmark runs (diva_jax/runs/*benchmark.py) end to end at tiny sizes, and their
binaries parse their flags and run."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax import models
from experiments.benchmarks import benchmark
from experiments.benchmarks import feature_benchmark
from experiments.benchmarks import ntk_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(sizes=(120,), d=12, c=3, repeats=2, brute_force_refits=2, dual_sizes=(80,),
            streamed_n=700, streamed_d=8, streamed_c=3, streamed_block=256)


def test_benchmark_run_tiny(tmp_path):
  x64 = jax.config.jax_enable_x64
  out = benchmark.run(str(tmp_path), isolation="pause", pause_s=0.0, round_robin=True,
                      xla=True, **TINY)
  assert jax.config.jax_enable_x64 == x64  # no global flag flipped
  assert json.loads((tmp_path / "benchmark.json").read_text()) == json.loads(json.dumps(out))
  # Like every binary: config.json (every option) and metrics.json (the result).
  assert json.loads((tmp_path / "config.json").read_text())["isolation"] == "pause"
  assert json.loads((tmp_path / "metrics.json").read_text())["primal"][0]["n"] == 120
  (primal,) = out["primal"]
  assert primal["n"] == 120 and primal["isolation"] == "pause"
  # Every contender timed alone: warm-up + `repeats` calls (jax.grad: half), all recorded.
  assert set(primal["alone"]) == set(benchmark.PRIMAL_CONTENDERS) | {"ours_xla_f64"}
  for name, t in primal["alone"].items():
    assert len(t["times_s"]) == (1 if name.startswith("autodiff") else 2), name
    assert t["median_s"] == pytest.approx(float(np.median(t["times_s"])))
  for name in ("ours_f64", "ours_f32", "autodiff_f64", "autodiff_f32", "ours_xla_f64"):
    assert primal[f"{name}_ratio_to_sklearn"] == pytest.approx(
        primal[f"{name}_s"] / primal["sklearn_f64_s"])
  assert set(primal["round_robin"]) == set(primal["alone"])
  assert all(len(t["times_s"]) == 2 for t in primal["round_robin"].values())
  assert primal["flops_value_and_grad"] == pytest.approx(4 * 120 * 12 ** 2 + 12 ** 3 / 3)
  assert primal["ours_f64_fraction_of_matmul_rate"] > 0
  # Our LOO equals scikit-learn's on the benchmark problem, and float32 is close.
  assert primal["max_abs_diff_loo_vs_sklearn"] < 1e-8
  assert primal["f32_rel_err_grad"] < 1e-3
  (dual,) = out["dual"]
  assert set(dual["alone"]) == set(benchmark.DUAL_CONTENDERS)
  assert dual["value_grad_over_cholesky"] > 0
  assert out["streamed"]["finite"] and out["streamed"]["n"] == 700


def test_benchmark_contender_in_fresh_process():
  res = benchmark.time_contender("primal", "ours_f64", n=60, d=5, c=2, repeats=2,
                                 isolation="process", pause_s=0.0)
  assert res["pid"] != os.getpid() and len(res["times_s"]) == 2 and res["warmup_s"] > 0


def test_benchmark_rejects_unknown_isolation(tmp_path):
  with pytest.raises(ValueError, match="isolation"):
    benchmark.run(str(tmp_path), isolation="threads", **TINY)


def test_benchmark_binary_tiny(tmp_path):
  cmd = [sys.executable, "-m", "experiments.benchmark", f"--workdir={tmp_path}", "--sizes=50",
         "--d=6", "--c=2", "--dual_sizes=", "--streamed_n=0", "--repeats=1",
         "--brute_force_refits=1", "--isolation=pause", "--pause_s=0", "--autodiff_max_n=0"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (primal,) = json.loads((tmp_path / "benchmark.json").read_text())["primal"]
  assert primal["n"] == 50 and "autodiff_f64" not in primal["alone"]
  assert "primal n=50" in proc.stdout


@pytest.mark.slow
def test_ntk_benchmark_run_tiny(tmp_path):
  x64 = jax.config.jax_enable_x64
  rows = ntk_benchmark.run(str(tmp_path), mlp_sizes=(4,), cnn_sizes=(6,), plain_mlp_sizes=(3,),
                           nnx_mlp_sizes=(3,), repeats=1, max_baseline_n=4, block_size=2)
  assert jax.config.jax_enable_x64 == x64
  out = json.loads((tmp_path / "ntk_benchmark.json").read_text())
  assert len(out["rows"]) == len(rows)
  mlp = [r for r in rows if r["model"] == "mlp"]
  assert {r["implementation"] for r in mlp} == {"jacrev_baseline", "structured",
                                                "jacobian_contraction", "ntk_vector_products"}
  assert all(r["max_abs_diff_vs_first"] < 1e-8 and r["seconds"] > 0 for r in rows)
  # Above max_baseline_n only the structured (blocked) kernel runs.
  assert [r["implementation"] for r in rows if r["model"] == "cnn"] == ["structured"]
  # The plain-function and nnx MLPs are as structured as the linen one.
  for name in ("mlp", "mlp_plain", "mlp_nnx"):
    (leaves,) = [r["leaves"] for r in rows if r["model"] == name and "leaves" in r]
    assert leaves == {"structured": 8}, (name, leaves)


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    return jnp.mean(x, axis=(1, 2))


def test_feature_benchmark_run_tiny(tmp_path):
  module = _TinyNet()  # EfficientNet-Lite0's random init alone takes 40 s on 2 cores
  backbone = models.from_flax(module, module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3))),
                              name="tiny", input_size=(12, 12))
  res = feature_benchmark.run(str(tmp_path), datasets=("digits",), feature_size=32,
                              throughput_sizes=(32,), throughput_images=8, batch_size=8,
                              throughput_dataset="digits", max_images=40, backbone=backbone,
                              data_dir=str(tmp_path / "tfds"))
  (tp,) = res["throughput"]
  assert tp["images"] == 8 and tp["images_per_s"] > 0
  sep = res["separability"]["digits"]
  assert sep["n_train"] == 40 and sep["n_test"] == 40
  assert sep["efficientnet_features"]["dim"] == 4
  assert 0 <= sep["raw_pixels"]["test_accuracy"] <= 1
  assert json.loads((tmp_path / "feature_benchmark.json").read_text())["backbone"] == (
      backbone.name)
