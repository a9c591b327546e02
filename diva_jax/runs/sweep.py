"""Expands a config file's `get_hyper(hyper)` into runs, and runs or prints them.

* local: the runs one after another in this machine (each a subprocess of the experiment
  binary, so a failing run does not take the sweep down). A restarted sweep skips a run
  only if its workdir holds metrics.json *and* a config.json equal to the config this run
  would have now (the config file, its variants, the sweep point and any extra
  `--config.*` arguments); otherwise the binary runs, resuming the stages of the same
  config, or refusing a workdir of another config unless `--overwrite` is passed.
* pod: prints, for each run, the one command to execute on every host of a TPU pod slice
  (`--distributed` makes each process call `jax.distributed.initialize()`; only process 0
  writes), e.g. through `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Callable, Optional

from diva_jax.runs import hyper
from diva_jax.runs.errors import ConfigError

__all__ = ["expand", "run_name", "commands", "run_local"]


def _load_config_module(config_path: str):
  path = config_path.split(":")[0]
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def expand(config_path: str) -> list[dict]:
  """The list of {'config.key': value} overrides the config's get_hyper defines."""
  module = _load_config_module(config_path)
  if not hasattr(module, "get_hyper"):
    raise ConfigError(f"{config_path.split(':')[0]} defines no get_hyper(hyper).")
  runs = module.get_hyper(hyper)
  if not runs:
    raise ConfigError(f"get_hyper of {config_path} returned no run.")
  return runs


def run_name(index: int, overrides: dict) -> str:
  parts = [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9_.=,-]", "_", f"{index:03d}_" + ",".join(parts))[:120]


def _flag_value(v) -> str:
  if isinstance(v, (tuple, list)):
    return repr(tuple(v))
  return str(v)


def commands(config_path: str, workdir: str, *, binary: Optional[str] = None,
             distributed: bool = False, python: str = "python") -> list[tuple[str, list[str]]]:
  """(run workdir, argv) for each run of the sweep."""
  if binary is None:
    binary = "experiments." + os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  out = []
  for i, ov in enumerate(expand(config_path)):
    wd = os.path.join(workdir, run_name(i, ov))
    argv = [python, "-m", binary, f"--config={config_path}", f"--workdir={wd}"]
    argv += [f"--{k}={_flag_value(v)}" for k, v in ov.items()]
    if distributed:
      argv.append("--distributed")
    out.append((wd, argv))
  return out


def resolved_config(argv: list[str]) -> Optional[dict]:
  """The config (as stored in config.json) that the binary would run with `argv` (its
  --config and --config.* arguments, parsed by ml_collections like the binary does); None if
  they do not parse."""
  from absl import flags
  from ml_collections import config_flags
  from diva_jax.runs import common
  config_args = [a for a in argv if a.startswith("--config=") or a.startswith("--config.")]
  argv = ["sweep"] + config_args
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                           lock_config=True, sys_argv=argv)
  try:
    fv(argv)
    return common._jsonable(holder.value)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    return None  # let the binary itself report it


def finished(workdir: str, argv: list[str]) -> bool:
  """True if `workdir` holds metrics.json of a run of exactly the config `argv` gives."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      stored = json.load(f)
    if not os.path.isfile(os.path.join(workdir, "metrics.json")):
      return False
  except (OSError, ValueError):
    return False
  return stored == resolved_config(argv)


def run_local(config_path: str, workdir: str, *, binary: Optional[str] = None,
              extra_args: tuple[str, ...] = (), cwd: Optional[str] = None,
              progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
  """Runs every point of the sweep in turn; returns [{workdir, overrides, returncode}]."""
  results = []
  cmds = commands(config_path, workdir, binary=binary, python=sys.executable)
  runs = expand(config_path)
  for i, ((wd, argv), ov) in enumerate(zip(cmds, runs)):
    argv = argv + list(extra_args)
    skipped = finished(wd, argv[3:])
    if skipped:
      rc = 0  # finished in an earlier invocation of the sweep, with this very config
    else:
      rc = subprocess.run(argv, cwd=cwd).returncode
    results.append({"workdir": wd, "overrides": ov, "returncode": rc, "skipped": skipped})
    if progress is not None:
      progress(i + 1, len(cmds))
  return results


def pod_commands(config_path: str, workdir: str, *, tpu_name: str = "$TPU_NAME",
                 zone: str = "$ZONE", binary: Optional[str] = None) -> list[str]:
  """One shell line per run: the same command on every host of a TPU pod slice."""
  lines = []
  for _, argv in commands(config_path, workdir, binary=binary, distributed=True):
    inner = " ".join(shlex.quote(a) for a in argv)
    lines.append(f"gcloud compute tpus tpu-vm ssh {tpu_name} --zone={zone} --worker=all "
                 f"--command={shlex.quote(inner)}")
  return lines
