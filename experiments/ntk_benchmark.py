r"""Kernel-build benchmark: throughput and peak memory of each NTK implementation
(experiments/benchmarks/ntk_benchmark.py) against the hand-written jacrev baseline, traced NTK, float64.

Run (CPU, about 5 minutes on 2 cores; the MLP is also benchmarked as a plain JAX
function and as an nnx module):

  python -m experiments.ntk_benchmark --workdir=/tmp/ntk_bench

EfficientNet-Lite0 (pretrained, 96 px, float32, traced over its 1280 features; the head by
default, --effnet_params for another subset), not run by default:

  python -m experiments.ntk_benchmark --workdir=/tmp/ntk_effnet --mlp_sizes= --cnn_sizes= \
      --plain_mlp_sizes= --nnx_mlp_sizes= --repeats=1 --effnet_sizes=32,64

Results are written to WORKDIR/ntk_benchmark.json and printed as a table.
"""

from absl import app
from absl import flags

from diva_jax.app import cli
from experiments.benchmarks import ntk_benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write ntk_benchmark.json.",
                               required=True)
_MLP_SIZES = flags.DEFINE_list("mlp_sizes", ["64", "256", "1024"], "n for the MLP.")
_CNN_SIZES = flags.DEFINE_list("cnn_sizes", ["32", "128", "256"], "n for the CNN.")
_PLAIN_MLP_SIZES = flags.DEFINE_list("plain_mlp_sizes", ["256"],
                                     "n for the MLP written as a plain JAX function.")
_NNX_MLP_SIZES = flags.DEFINE_list("nnx_mlp_sizes", ["256"], "n for the MLP written in nnx.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per case (best is kept).")
_MAX_BASELINE_N = flags.DEFINE_integer(
    "max_baseline_n", 256, "Skip the jacrev baseline and the Jacobian-holding implementations "
    "above this n (their memory grows like n * c * P).")
_SKIP = flags.DEFINE_list("skip", [], "model:implementation cases not to run, e.g. "
                          "cnn:ntk_vector_products,cnn:jacrev_baseline (memory).")
_EFFNET_SIZES = flags.DEFINE_list(
    "effnet_sizes", [], "n for the pretrained EfficientNet-Lite0 at 96 px (float32, traced over "
    "its 1280 features); none by default.")
_EFFNET_PARAMS = flags.DEFINE_string(
    "effnet_params", r"^params/head_(conv|bn)/", "Regex over EfficientNet parameter paths: "
    "the linearised subset (e.g. '^params/(head_(conv|bn)|block_15)/': + the last block).")
_EFFNET_BLOCK_SIZE = flags.DEFINE_integer("effnet_block_size", 32,
                                          "Block size for EfficientNet n above it.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 256,
                                   "Block size used for n above it (bounded memory).")


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  ntk_benchmark.run(_WORKDIR.value, mlp_sizes=[int(s) for s in _MLP_SIZES.value if s],
                    cnn_sizes=[int(s) for s in _CNN_SIZES.value if s],
                    plain_mlp_sizes=[int(s) for s in _PLAIN_MLP_SIZES.value if s],
                    nnx_mlp_sizes=[int(s) for s in _NNX_MLP_SIZES.value if s], repeats=_REPEATS.value,
                    max_baseline_n=_MAX_BASELINE_N.value, block_size=_BLOCK_SIZE.value,
                    skip=_SKIP.value,
                    effnet_sizes=[int(s) for s in _EFFNET_SIZES.value if s],
                    effnet_params=_EFFNET_PARAMS.value, effnet_block_size=_EFFNET_BLOCK_SIZE.value)


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
