#!/usr/bin/env bash
# The GPU checks of the scale-out issue, as one prepared script (run from the repository root
# on a machine with a CUDA GPU and `pip install -e ".[gpu]"` done; no network needed after).
# Writes everything under ${OUT:-/tmp/diva/gpu}; about 5-8 minutes on one H100/H200.
set -euo pipefail
OUT=${OUT:-/tmp/diva/gpu}
mkdir -p "$OUT"
python -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"
# 1. Matrix rate, EfficientNet-Lite0 images/s, the derivative's time against the matrix rate.
python -m experiments.device_benchmark --workdir="$OUT/device" 2>&1 | tail -60
# 2. The main job (features on the GPU, derivative through the XLA backend).
/usr/bin/time -v python -m experiments.outlier_rejection --workdir="$OUT/main_job" \
  2> "$OUT/main_job.time" | tee "$OUT/main_job.txt"
grep -E "Elapsed|Maximum resident" "$OUT/main_job.time" || true
# 3. The LOO benchmark against scikit-learn (ours runs XLA on the GPU with --xla).
python -m experiments.benchmark --workdir="$OUT/bench" --sizes=5000,20000 --dual_sizes=10000 \
  --streamed_n=0 --xla --repeats=5 2>&1 | tail -40
echo "results in $OUT"
