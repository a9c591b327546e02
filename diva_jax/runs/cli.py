"""The shared main() of the experiment binaries: flags in, `run(config, workdir)` out."""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags


def define_and_run(default_config: str, run_fn) -> None:
  """Defines --config/--workdir/--overwrite/--distributed and runs `run_fn`."""
  config = config_flags.DEFINE_config_file(
      "config", default_config, "Config file, optionally with a variant: file.py:runlocal",
      lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for the run's outputs (resumable).",
                                required=True)
  overwrite = flags.DEFINE_bool(
      "overwrite", False, "Discard results stored in --workdir by a run of another config.")
  distributed = flags.DEFINE_bool(
      "distributed", False, "Call jax.distributed.initialize() first (multi-host: one process "
      "per host; only process 0 writes).")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if distributed.value:
      import jax
      jax.distributed.initialize()
    try:
      run_fn(config.value, workdir.value, overwrite=overwrite.value)
    except ValueError as e:  # bad input: a one-line error, no traceback
      raise app.UsageError(str(e)) from e

  app.run(main)
