"""Scale-out benchmark: feature extraction and a whole run as 1 process and as P processes.

Two measurements, each contender a fresh set of processes (nothing warm is shared), run
one after another on the same machine:

* features: the backbone over the images of a dataset split (fresh feature cache), as
  1 process given every listed CPU core (``taskset``) vs P processes on loopback
  (``jax.distributed``, gloo), process i pinned to core i (1 core each). Wall time from
  the launch to the last process's exit, and the features stage's own time (the
  ``features_s`` the worker reports: loading the backbone, compiling, embedding its
  rows, gathering them). With the same cores in both, efficiency = t_1 / t_P (1.0: the
  processes embed as fast as one process with all the threads).
* run: a whole experiment binary (default the ``:runlocal`` outlier rejection) as 1
  process vs P processes, fresh workdir and cache each: the P-process overhead.

`python -m experiments.scaling_benchmark --workdir=/tmp/diva/scaling`; writes
``scaling_benchmark.json``. The worker (``python -m experiments.benchmarks.scaling_benchmark``)
is the features contender.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Sequence

from diva_jax import io_utils
from diva_jax import data
from diva_jax import models
from diva_jax.features import extract as features
from diva_jax.parallel import multihost as distributed
from diva_jax.app import cli

from experiments.lib import ROOT as _REPO
from experiments.lib import records_run


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(argv: list[str], nproc: int, cores: Sequence[int], timeout_s: float) -> dict:
  """Runs `argv` as `nproc` processes (process i pinned to its share of `cores`)."""
  port = _free_port()
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
  share = max(1, len(cores) // nproc)
  procs = []
  start = time.perf_counter()
  for i in range(nproc):
    mine = [str(c) for c in cores[i * share:(i + 1) * share]] or [str(cores[0])]
    dist = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={nproc}",
             f"--process_id={i}"] if nproc > 1 else [])
    pin = ["taskset", "-c", ",".join(mine)] if shutil.which("taskset") else []
    procs.append(subprocess.Popen(pin + [sys.executable] + argv + dist, cwd=_REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  logs = [p.communicate(timeout=timeout_s)[0] for p in procs]
  wall = time.perf_counter() - start
  for i, (p, log) in enumerate(zip(procs, logs)):
    if p.returncode:
      raise RuntimeError(f"process {i} of {argv} failed:\n{log[-3000:]}")
  return {"wall_s": wall, "logs": logs}


def _worker_result(log: str) -> dict:
  for line in log.splitlines():
    if line.startswith("SCALING_RESULT "):
      return json.loads(line[len("SCALING_RESULT "):])
  raise RuntimeError(f"no result in the worker's output:\n{log[-3000:]}")


@records_run
def run(workdir: str, *, dataset: str = "mnist5k", split: str = "train", max_images: int = 0,
        image_size: int = 96, batch_size: int = 64, processes: int = 2,
        cores: Sequence[int] = (0, 1), run_config: str = "configs/outlier_rejection.py:runlocal",
        run_binary: str = "experiments.outlier_rejection", run_args: Sequence[str] = (),
        timeout_s: float = 1800) -> dict:
  """Both measurements; writes ``{workdir}/scaling_benchmark.json`` atomically."""
  os.makedirs(workdir, exist_ok=True)
  out = {"date": time.strftime("%Y-%m-%d"), "processes": processes, "cores": list(cores),
         "cpu_count": os.cpu_count()}
  feats = {}
  for p in (1, processes):
    cache = os.path.join(workdir, f"cache_{p}proc")
    shutil.rmtree(cache, ignore_errors=True)
    argv = ["-m", "experiments.benchmarks.scaling_benchmark", f"--dataset={dataset}", f"--split={split}",
            f"--max_images={max_images}", f"--image_size={image_size}",
            f"--batch_size={batch_size}", f"--cache_dir={cache}"]
    res = _launch(argv, p, cores, timeout_s)
    per = [_worker_result(log) for log in res["logs"]]
    feats[f"{p}_process"] = {"wall_s": res["wall_s"],
                             "features_s": max(r["features_s"] for r in per),
                             "rows_embedded_per_process": per[0]["rows_embedded_per_process"],
                             "images": per[0]["images"], "threads_per_process":
                             max(1, len(cores) // p)}
  one, many = feats["1_process"], feats[f"{processes}_process"]
  # Same cores in both: 1.0 means P processes x 1 thread embed as fast as 1 process x P
  # threads (above 1: faster).
  feats["efficiency_features_s"] = one["features_s"] / many["features_s"]
  feats["speedup_wall"] = one["wall_s"] / many["wall_s"]
  out["features"] = feats
  runs = {}
  for p in (1, processes):
    wd = os.path.join(workdir, f"run_{p}proc")
    shutil.rmtree(wd, ignore_errors=True)
    res = _launch(["-m", run_binary, f"--config={run_config}", f"--workdir={wd}"]
                  + list(run_args), p, cores, timeout_s)
    with open(os.path.join(wd, "metrics.json")) as f:
      m = json.load(f)
    runs[f"{p}_process"] = {"wall_s": res["wall_s"], "seconds": m.get("seconds"),
                            "parallelism": m.get("parallelism"),
                            "detection_f1": m.get("detection_f1")}
  runs["overhead_wall"] = runs[f"{processes}_process"]["wall_s"] / runs["1_process"]["wall_s"]
  out["run"] = runs
  io_utils.atomic_write_json(os.path.join(workdir, "scaling_benchmark.json"), out)
  return out


def _worker(argv) -> None:
  """One process of the features contender: prints `SCALING_RESULT {json}`."""
  from absl import flags
  fl = flags.FLAGS
  flags.DEFINE_string("dataset", "mnist5k", "")
  flags.DEFINE_string("split", "train", "")
  flags.DEFINE_integer("max_images", 0, "")
  flags.DEFINE_integer("image_size", 96, "")
  flags.DEFINE_integer("batch_size", 64, "")
  flags.DEFINE_string("cache_dir", None, "")
  dist_flags = cli.define_distributed_flags()
  fl(argv)
  cli.initialize_distributed(dist_flags)
  images = data.load(fl.dataset, fl.split).images
  if fl.max_images:
    images = images[:fl.max_images]
  start = time.perf_counter()
  backbone = models.efficientnet_lite0(pretrained=True, input_size=fl.image_size)
  res = features.cached_features(backbone, images, dataset=fl.dataset, split=fl.split,
                                 cache_dir=fl.cache_dir, batch_size=fl.batch_size)
  seconds = time.perf_counter() - start
  print("SCALING_RESULT " + json.dumps({
      "features_s": seconds, "images": int(len(images)),
      "rows_embedded_per_process": list(res.rows_embedded_per_process),
      "process": distributed.process_index()}), flush=True)
  distributed.barrier("scaling worker end")


if __name__ == "__main__":
  _worker(sys.argv)
