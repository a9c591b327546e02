r"""Benchmark: LOO value + dataset derivative against its peers (experiments/benchmarks/benchmark.py).

Each contender is timed alone, in a fresh process by default (--isolation=pause: one after
another in this process, with a --pause_s sleep between them); --round_robin also records
the old interleaved, in-process timing.

  python -m experiments.benchmark --workdir=/tmp/diva/bench
  python -m experiments.benchmark --workdir=/tmp/diva/bench --sizes=5000,20000 \
      --dual_sizes= --streamed_n=0

Writes <workdir>/benchmark.json (atomically, every timed call included) and prints a table.
The streamed run's peak memory is the process's peak RSS: run it alone (--sizes= --dual_sizes=)
for a figure that only it determines.
"""

from absl import app
from absl import flags

from diva_jax.app import cli
from experiments.benchmarks import benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "Where benchmark.json is written.",
                               required=True)
_SIZES = flags.DEFINE_list("sizes", ["2000", "5000", "20000"], "Primal sample counts n.")
_D = flags.DEFINE_integer("d", 1280, "Feature dimension of the primal runs.")
_C = flags.DEFINE_integer("c", 10, "Number of outputs (classes).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per primal contender after a "
                                "warm-up (medians reported; jax.grad gets half).")
_ISOLATION = flags.DEFINE_enum("isolation", "process", list(benchmark.ISOLATIONS),
                               "process: each contender in a fresh process; pause: one after "
                               "another in this process, --pause_s apart.")
_PAUSE_S = flags.DEFINE_float("pause_s", 1.0, "Sleep before each contender (lets the previous "
                              "one's BLAS threads stop spinning).")
_ROUND_ROBIN = flags.DEFINE_bool("round_robin", False, "Also time the primal contenders "
                                 "round-robin in this process (the old protocol).")
_XLA = flags.DEFINE_bool("xla", False, "Also time ours with backend='xla' (float64).")
_REFITS = flags.DEFINE_integer("brute_force_refits", 3, "Refits timed for the brute force.")
_AUTODIFF_MAX_N = flags.DEFINE_integer("autodiff_max_n", 20000, "Largest n for jax.grad.")
_DUAL_SIZES = flags.DEFINE_list("dual_sizes", ["10000"], "Kernel sizes n (float64).")
_DUAL_REPEATS = flags.DEFINE_integer("dual_repeats", 1, "Timed calls of the dual contenders.")
_STREAMED_N = flags.DEFINE_integer("streamed_n", 1_000_000, "Rows, streamed run (0 skips it).")
_STREAMED_D = flags.DEFINE_integer("streamed_d", 1024, "Features of the streamed run.")
_STREAMED_C = flags.DEFINE_integer("streamed_c", 100, "Outputs of the streamed run.")
_STREAMED_BLOCK = flags.DEFINE_integer("streamed_block", 32768, "Rows per streamed block.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  benchmark.run(
      _WORKDIR.value, sizes=[int(s) for s in _SIZES.value if s], d=_D.value, c=_C.value,
      repeats=_REPEATS.value, brute_force_refits=_REFITS.value,
      autodiff_max_n=_AUTODIFF_MAX_N.value, dual_sizes=[int(s) for s in _DUAL_SIZES.value if s],
      dual_repeats=_DUAL_REPEATS.value, streamed_n=_STREAMED_N.value,
      streamed_d=_STREAMED_D.value, streamed_c=_STREAMED_C.value,
      streamed_block=_STREAMED_BLOCK.value, seed=_SEED.value, isolation=_ISOLATION.value,
      pause_s=_PAUSE_S.value, round_robin=_ROUND_ROBIN.value, xla=_XLA.value)


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
