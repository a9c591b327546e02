r"""Sweep launcher: expands a config's get_hyper into runs.

  # one after another on this machine (rerunning skips the runs that finished with the
  # same config; extra arguments after `--` go to every run):
  python -m experiments.sweep --config=configs/outlier_rejection.py:runlocal \
      --workdir=/tmp/diva/sweep
  # the same sweep as P processes (here 2 on loopback; on a TPU pod slice: the same command
  # on every host with --distributed): features extracted once over all devices, the points
  # divided among the processes, one sweep.csv written by process 0:
  python -m experiments.sweep --config=configs/outlier_rejection.py:runlocal \
      --workdir=/tmp/diva/sweep --coordinator_address=127.0.0.1:12345 --num_processes=2 \
      --process_id=0   # and --process_id=1 in a second process
  # print one command per run for all hosts of a TPU pod slice (each run over the pod):
  python -m experiments.sweep --config=configs/outlier_rejection.py --workdir=/mnt/shared/sweep \
      --mode=pod --tpu_name=my-tpu --zone=us-central2-b
"""

import json

from absl import app
from absl import flags

from diva_jax.app import cli
from diva_jax.app import common
from experiments.lib import sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file (with get_hyper), optionally :variant.",
                              required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.", required=True)
_MODE = flags.DEFINE_enum("mode", "local", ["local", "print", "pod"],
                          "local: run them here; print: the commands; pod: TPU pod commands.")
_BINARY = flags.DEFINE_string("binary", None, "Module to run (default experiments.<config name>).")
_TPU = flags.DEFINE_string("tpu_name", "$TPU_NAME", "TPU VM name for --mode=pod.")
_ZONE = flags.DEFINE_string("zone", "$ZONE", "TPU zone for --mode=pod.")
_DIST = cli.define_distributed_flags()


def main(argv):
  cli.quiet_libraries()
  extra = tuple(argv[1:])
  try:
    if _MODE.value == "pod":
      print("\n".join(sweep.pod_commands(_CONFIG.value, _WORKDIR.value, tpu_name=_TPU.value,
                                         zone=_ZONE.value, binary=_BINARY.value)))
    elif _MODE.value == "print":
      for _, cmd in sweep.commands(_CONFIG.value, _WORKDIR.value, binary=_BINARY.value):
        print(" ".join(cmd + list(extra)))
    else:
      cli.initialize_distributed(_DIST)
      from diva_jax.parallel import multihost as distributed
      if distributed.process_count() > 1:
        res = sweep.run_distributed(_CONFIG.value, _WORKDIR.value, binary=_BINARY.value,
                                    extra_args=extra)
      else:
        res = sweep.run_local(_CONFIG.value, _WORKDIR.value, binary=_BINARY.value,
                              extra_args=extra, progress=common.progress_bar("sweep"))
      if distributed.process_index() == 0:
        print(json.dumps([{k: v for k, v in r.items() if k != "metrics"} for r in res],
                         indent=1))
      if any(r["returncode"] for r in res):
        raise SystemExit(1)
  except common.ConfigError as e:  # our input validation: one line, no traceback
    cli.fail(e)


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main, flags_parser=cli.parse_flags)
