"""Expands a config file's `get_hyper(hyper)` into runs, and runs or prints them.

* local: the runs one after another in this machine (each a subprocess of the experiment
  binary, so a failing run does not take the sweep down). A restarted sweep skips a run
  only if its workdir holds metrics.json *and* a config.json equal to the config this run
  would have now (the config file, its variants, the sweep point and any extra
  `--config.*` arguments); otherwise the binary runs, resuming the stages of the same
  config, or refusing a workdir of another config unless `--overwrite` is passed.
* distributed (`run_distributed`, what the sweep binary does when it runs as several
  processes, e.g. one per host of a TPU pod slice, or P processes on loopback): the
  features of each (dataset, backbone, image size, split sizes) are extracted once, sharded
  over every device of every process, into the sweep's shared feature cache; then the
  points are divided among the processes (point i on process i mod P), each running its
  share one after another in-process on its local devices (`diva_jax.parallel.multihost.local`),
  resumable like the local sweep; process 0 gathers every point's metrics and writes one
  `sweep.csv` and `sweep.png`.
* pod: prints, for each run, the one command to execute on every host of a TPU pod slice
  (`--distributed` makes each process call `jax.distributed.initialize()`; only process 0
  writes), e.g. through `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`.

Every run of a sweep uses the sweep's feature cache, `<workdir>/cache` (unless the config
names a cache_dir), so runs of the same data share their features.
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

from experiments.lib import hyper
from diva_jax.app.errors import ConfigError
from diva_jax import io_utils
from diva_jax.parallel import multihost as distributed
from diva_jax.app import common
from diva_jax.app import plots
from diva_jax.app.workdir import csv_cell
import importlib
import traceback

__all__ = ["expand", "run_name", "commands", "run_local", "run_distributed", "write_summary"]


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
  base = resolved_config([f"--config={config_path}"]) or {}
  shared_cache = ([f"--config.cache_dir={os.path.join(workdir, 'cache')}"]
                  if base.get("cache_dir") == "" else [])
  for i, ov in enumerate(expand(config_path)):
    wd = os.path.join(workdir, run_name(i, ov))
    argv = [python, "-m", binary, f"--config={config_path}", f"--workdir={wd}"] + shared_cache
    argv += [f"--{k}={_flag_value(v)}" for k, v in ov.items()]
    if distributed:
      argv.append("--distributed")
    out.append((wd, argv))
  return out


def resolved_config(argv: list[str], as_dict: bool = True):
  """The config (as stored in config.json) that the binary would run with `argv` (its
  --config and --config.* arguments, parsed by ml_collections like the binary does); None if
  they do not parse. `as_dict=False`: the ConfigDict itself."""
  from absl import flags
  from ml_collections import config_flags
  config_args = [a for a in argv if a.startswith("--config=") or a.startswith("--config.")]
  argv = ["sweep"] + config_args
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                           lock_config=True, sys_argv=argv)
  try:
    fv(argv)
    if not as_dict:
      return holder.value
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
    results.append({"index": i, "workdir": wd, "overrides": ov, "returncode": rc,
                    "skipped": skipped, "metrics": _read_metrics(wd)})
    if progress is not None:
      progress(i + 1, len(cmds))
  write_summary(workdir, results)
  return results


def _read_metrics(workdir: str) -> Optional[dict]:
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _scalars(metrics: Optional[dict]) -> dict:
  """The top-level numbers of a run's metrics.json."""
  return {k: v for k, v in (metrics or {}).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_summary(workdir: str, results: list[dict]) -> None:
  """`<workdir>/sweep.csv` (one row per run: overrides, return code, every top-level number
  of its metrics.json) and `sweep.png` (the main metrics across runs); process 0 only."""
  if distributed.process_index() != 0 or not results:
    return
  keys_ov = list(dict.fromkeys(k for r in results for k in r["overrides"]))
  keys_m = list(dict.fromkeys(k for r in results for k in _scalars(r.get("metrics"))))
  header = ["index", "run", "returncode", "skipped"] + keys_ov + keys_m
  lines = [",".join(header)]
  for r in sorted(results, key=lambda r: r["index"]):
    m = _scalars(r.get("metrics"))
    cells = [r["index"], os.path.basename(r["workdir"]), r["returncode"], int(r["skipped"])]
    cells += [r["overrides"].get(k, "") for k in keys_ov]
    cells += [m.get(k, "") for k in keys_m]
    lines.append(",".join(csv_cell(c) for c in cells))
  io_utils.atomic_write_text(os.path.join(workdir, "sweep.csv"), "\n".join(lines) + "\n")
  shown = [k for k in ("detection_f1", "detection_auroc", "test_error_before",
                       "test_error_after") if k in keys_m] or keys_m[:4]
  if shown:
    fig = plots.sweep_plot([os.path.basename(r["workdir"]) for r in results],
                           {k: [_scalars(r.get("metrics")).get(k) for r in results]
                            for k in shown})
    plots.save_png(os.path.join(workdir, "sweep.png"), fig)


def _feature_key(cfg) -> Optional[tuple]:
  """What a run's features depend on, for the runs that embed with `common.prepare_features`
  (None: the run embeds its own way, or needs no backbone)."""
  fields = ("dataset", "backbone", "image_size", "max_train", "max_test", "data_dir",
            "cache_dir", "batch_size", "linearize")
  if any(f not in cfg for f in fields) or cfg.backbone == "pixels":
    return None
  if cfg.linearize != "last_layer":
    return None
  return tuple(str(cfg[f]) for f in fields)


def _run_module(name: str):
  """The run module behind `experiments.<name>`: in experiments/paper, studies or
  benchmarks."""
  for group in ("paper", "studies", "benchmarks"):
    if importlib.util.find_spec(f"experiments.{group}.{name}") is not None:
      return importlib.import_module(f"experiments.{group}.{name}")
  raise ConfigError(f"no run module for the binary experiments.{name}")


def run_distributed(config_path: str, workdir: str, *, binary: Optional[str] = None,
                    extra_args: tuple[str, ...] = ()) -> list[dict]:
  """The sweep over every process (`jax.distributed` initialised; every process calls it).

  1. the features of each distinct (dataset, backbone, image size, sizes) among the points,
     extracted once with the rows split over every device of every process;
  2. point i on process i mod P, in-process on its local devices, skipping the points that
     finished with the same config (resumable);
  3. every point's result gathered to process 0, which writes sweep.csv and sweep.png.
  A failing point is recorded (returncode 1, its traceback logged), not fatal.

  Returns:
    [{index, workdir, overrides, returncode, skipped, metrics}] of every point (all
    processes' points, on every process).
  """
  from absl import logging
  cmds = commands(config_path, workdir, binary=binary, python=sys.executable)
  runs = expand(config_path)
  binary = cmds[0][1][2]
  run_fn = _run_module(binary.rsplit(".", 1)[-1]).run
  configs = []
  for wd, argv in cmds:
    cfg = resolved_config(argv[3:] + list(extra_args), as_dict=False)
    if cfg is None:
      raise ConfigError(f"the arguments of run {wd} do not parse: {argv[3:] + list(extra_args)}")
    configs.append(cfg)
  # 1. features, sharded over the whole job (the points' runs then hit the cache).
  done = set()
  for cfg in configs:
    key = _feature_key(cfg)
    if key is None or key in done:
      continue
    done.add(key)
    backbone = common.make_backbone(cfg)
    for split, max_n in (("train", cfg.max_train), ("test", cfg.max_test)):
      images, _, _ = common.load_split(cfg, split, max_n)
      common.embed(cfg, backbone, images, dataset=cfg.dataset, split=f"{split}{max_n or ''}",
                   cache_dir=cfg.cache_dir)
  # 2. this process's share of the points, each as a single-process run.
  mine = []
  for i, ((wd, argv), ov, cfg) in enumerate(zip(cmds, runs, configs)):
    if i % distributed.process_count() != distributed.process_index():
      continue
    skipped = finished(wd, argv[3:] + list(extra_args))
    rc = 0
    if not skipped:
      overwrite = "--overwrite" in extra_args
      with distributed.local():
        try:
          run_fn(cfg, wd, overwrite=overwrite)
        except ConfigError as e:
          logging.error("run %s: %s", wd, e)
          rc = 2
        except Exception:  # pylint: disable=broad-except
          logging.error("run %s failed:\n%s", wd, traceback.format_exc())
          rc = 1
    logging.info("sweep point %d (%s) on process %d: returncode %d%s", i, wd,
                 distributed.process_index(), rc, " (finished before)" if skipped else "")
    mine.append({"index": i, "workdir": wd, "overrides": ov, "returncode": rc,
                 "skipped": skipped, "process": distributed.process_index(),
                 "metrics": _read_metrics(wd)})
  # 3. one summary.
  gathered = distributed.allgather_bytes(json.dumps(mine).encode())
  results = sorted((r for b in gathered for r in json.loads(b.decode())),
                   key=lambda r: r["index"])
  write_summary(workdir, results)
  distributed.barrier("sweep end")
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
