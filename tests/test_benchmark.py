"""The benchmark binary runs end to end at a tiny size and writes its JSON."""

import json
import subprocess
import sys


def test_benchmark_binary_tiny(tmp_path):
  cmd = [sys.executable, "-m", "experiments.benchmark", f"--workdir={tmp_path}", "--sizes=120",
         "--d=12", "--c=3", "--dual_sizes=80", "--streamed_n=700", "--streamed_d=8",
         "--streamed_c=3", "--streamed_block=256", "--repeats=1", "--brute_force_refits=2"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "benchmark.json").read_text())
  (primal,) = out["primal"]
  assert primal["n"] == 120 and primal["sklearn_f64_s"] > 0
  # Our LOO equals scikit-learn's on the benchmark problem, and float32 is close.
  assert primal["max_abs_diff_loo_vs_sklearn"] < 1e-8
  assert primal["f32_rel_err_grad"] < 1e-3
  assert out["dual"][0]["value_grad_over_cholesky"] > 0
  assert out["streamed"]["finite"] and out["streamed"]["n"] == 700
