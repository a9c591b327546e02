"""The shared main() of the experiment binaries: flags in, `run(config, workdir)` out.

Bad input (a config value, an unknown or mistyped `--config.` override, the workdir) is
reported as one line, `error: ...` on stderr, exit status 2, with no traceback and no usage
text. Every other exception propagates with its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import app
from absl import flags
from ml_collections import config_flags

from diva_jax.app import common
from diva_jax.parallel import multihost as distributed


def fail(message: str) -> NoReturn:
  """Prints `error: message` (one line) to stderr and exits with status 2."""
  sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
  sys.stderr.flush()
  raise SystemExit(2)


def _override_keys(argv) -> list[str]:
  return [a.lstrip("-").split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]


def _without_traceback(message: str) -> str:
  """ml_collections embeds the config file's traceback in its flag error: keep the error."""
  if "Traceback (most recent call last)" not in message:
    return message
  head = message.split("Traceback (most recent call last)")[0].rstrip(" :\n")
  last = [line for line in message.splitlines() if line.strip()][-1].strip()
  return f"{head}: {last}"


def _fail_on_config_error(e: Exception, argv) -> NoReturn:
  """One line for an ml_collections error about the config or its overrides."""
  if isinstance(e, flags.Error):
    fail(_without_traceback(str(e)))
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections: an override of a field the config does not have.
    keys = ", ".join(f"--{k}" for k in _override_keys(argv)) or "--config"
    hint = ""
    for err in (e, e.__context__, getattr(e.__context__, "__context__", None)):
      text = str(err.args[0]) if err is not None and err.args else ""
      if "did you mean" in text.lower():
        hint = " (" + text[text.lower().index("did you mean"):].strip(" '\"") + ")"
        break
    fail(f"{keys}: the config has no such field{hint}.")
  # TypeError / ValueError: an override whose value does not fit the field's type; or the
  # config file's get_config() refusing its argument (an unknown variant).
  fail(f"bad --config ({', '.join(_override_keys(argv)) or 'file or variant'}): {e}")


_CONFIG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)


def parse_flags(argv):
  """absl's flag parsing, with bad flags and config overrides reported in one line."""
  try:
    return flags.FLAGS(argv)
  except _CONFIG_ERRORS as e:
    _fail_on_config_error(e, argv)


def define_distributed_flags():
  """--distributed, --coordinator_address, --num_processes, --process_id."""
  return {
      "distributed": flags.DEFINE_bool(
          "distributed", False, "Call jax.distributed.initialize() first, auto-detecting the "
          "cluster (TPU pod slices, SLURM): one process per host; only process 0 writes."),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0 (jax.distributed.initialize); "
          "with --num_processes and --process_id, e.g. 127.0.0.1:12345 on loopback."),
      "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes."),
      "process_id": flags.DEFINE_integer("process_id", None, "This process's index."),
  }


def initialize_distributed(values) -> None:
  """Starts jax.distributed if the flags ask for it (before any other JAX call)."""
  explicit = [values[k].value for k in ("coordinator_address", "num_processes", "process_id")]
  if not values["distributed"].value and all(v is None for v in explicit):
    return
  try:
    distributed.initialize(*explicit)
  except ValueError as e:
    fail(str(e).replace("coordinator_address, num_processes and process_id",
                        "--coordinator_address, --num_processes and --process_id"))


def finish_distributed() -> None:
  """Every process waits for the others here, so none exits while another needs it."""
  if distributed.process_count() > 1:
    distributed.barrier("diva_jax end of run")


def quiet_by_default() -> None:
  """Warnings and errors only, unless `--verbosity=0` (INFO: every stage, JAX's backend
  probes) or higher: the binary's own printed summary is what a user reads first."""
  given = any(a.split("=")[0] in ("--verbosity", "-v", "--v") for a in sys.argv[1:])
  if not given:  # (flags.FLAGS.set_default does not reach absl's logging level)
    sys.argv[1:1] = ["--verbosity=-1"]


def quiet_libraries() -> None:
  """At the default verbosity, the libraries' own INFO loggers (TFDS, JAX) are quiet too."""
  if flags.FLAGS["verbosity"].value < 0:
    import logging
    for name in ("tensorflow_datasets", "jax"):
      logging.getLogger(name).setLevel(logging.WARNING)


def define_and_run(default_config: str, run_fn) -> None:
  """Defines --config/--workdir/--overwrite and the distributed flags, and runs `run_fn`.

  `default_config` is a config file's path (the binaries pass their config module's
  `__file__`, so they find it from any working directory); `--config=:variant` means that
  file with the variant.
  """
  sys.argv[1:] = [f"--config={default_config}{a[len('--config='):]}"
                  if a.startswith("--config=:") else a for a in sys.argv[1:]]
  try:
    # Without --config= on the command line, ml_collections loads the default file and
    # applies the --config.* overrides here, at definition: the same one-line errors.
    config = config_flags.DEFINE_config_file(
        "config", default_config, "Config file, optionally with comma-separated variants: "
        "file.py:runlocal,pixels", lock_config=True)
  except _CONFIG_ERRORS as e:
    _fail_on_config_error(e, sys.argv)
  workdir = flags.DEFINE_string("workdir", None, "Directory for the run's outputs (resumable).",
                                required=True)
  overwrite = flags.DEFINE_bool(
      "overwrite", False, "Discard the outputs stored in --workdir by a run of another config.")
  dist_flags = define_distributed_flags()
  quiet_by_default()

  def main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    initialize_distributed(dist_flags)
    try:
      run_fn(config.value, workdir.value, overwrite=overwrite.value)
    except common.ConfigError as e:  # our input validation: one line, no traceback
      fail(e)
    finish_distributed()

  app.run(main, flags_parser=parse_flags)
