"""The run directory: config check, resumable stages, atomic outputs, stale-output removal.

Each expensive step is a *stage* saved atomically under `<workdir>/stages/<name>.npz` or
`.json`; a rerun with the same config loads finished stages. `Workdir` writes `config.json`
(and, with `overwrite`, deletes the outputs of the run stored there before) only at its
first write, so a config that fails validation leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from typing import Any, Callable, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np

from diva_jax.parallel import multihost as dist
from diva_jax import io_utils
from diva_jax.app.errors import ConfigError


from diva_jax.app.config_checks import ConfigMismatchError
from diva_jax.app import plots


def is_main_process() -> bool:
  """Process 0 of a multi-process run (or inside `diva_jax.parallel.multihost.local()`)."""
  return dist.process_index() == 0


def parallelism() -> dict:
  """What this run computes with: processes and devices (all hosts)."""
  return {"processes": dist.process_count(), "devices": len(dist.devices())}


def _jsonable(config) -> dict:
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return json.loads(json.dumps(d, sort_keys=True, default=str))


def _diff(a: Mapping, b: Mapping, prefix="") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: stored {va!r}, new {vb!r}")
  return out


# Outputs of a run, deleted by `overwrite` (the feature cache is validated by its key, so it
# stays): stages/, config.json and every top-level .json, .csv and .png.
_OUTPUT_SUFFIXES = (".json", ".csv", ".png")


class Workdir:
  """A run's directory: config.json, resumable stages and atomically written outputs.

  The constructor checks the stored config (ConfigMismatchError) but writes nothing; the
  first write (a stage, an output, or `commit()` before a feature cache is filled) creates
  the directory, deletes the old run's outputs if `overwrite` discards a different config,
  and writes config.json.

  Multi-process runs compute everywhere and write once: only process 0 writes, and
  process 0's view of the workdir decides for all (the stored config's check; whether a
  stage is loaded, whose bytes it then sends to the others, or computed by all, after which
  every process takes process 0's result), so the processes never diverge and hosts need
  no shared filesystem. `parallelism` (processes, devices, rows embedded per process) is
  added to metrics.json.
  """

  def __init__(self, path: str | os.PathLike, config, *, overwrite: bool = False,
               output_keys: tuple[str, ...] = ()):
    """`output_keys`: config keys that change only how finished stages are written out
    (e.g. curate's ``relabel``): a stored run that differs from `config` in those alone is
    reused, its stages kept and config.json updated, without `overwrite`."""
    self.output_keys = frozenset(output_keys)
    self.path = os.fspath(path) if path is not None else ""
    if not self.path:
      raise ConfigError("--workdir must name a directory, got an empty path.")
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"workdir {self.path} exists and is not a directory.")
    parent = os.path.dirname(os.path.abspath(self.path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      raise ConfigError(f"cannot create workdir {self.path}: {parent} is not a directory.")
    self.config = _jsonable(config)
    self.write = is_main_process()
    self._committed = False
    self._discard = False
    self.parallelism = dict(parallelism(), rows_embedded_per_process=[0] * dist.process_count())
    error = ""
    if self.write:
      try:
        self._check_stored(overwrite)
      except ConfigMismatchError as e:
        error = str(e)
    if dist.process_count() > 1:  # process 0 decides for every process
      error = dist.broadcast_bytes(error.encode()).decode()
      self._discard = dist.broadcast_bytes(b"1" if self._discard else b"0") == b"1"
    if error:
      raise ConfigMismatchError(error)

  def _check_stored(self, overwrite):
    cfg_path = os.path.join(self.path, "config.json")
    if os.path.exists(cfg_path):
      try:
        with open(cfg_path) as f:
          stored = json.load(f)
      except (OSError, ValueError):
        stored = None  # unreadable: treated as a different config
      if stored != self.config:
        diff = _diff(stored or {}, self.config) if stored is not None else ["unreadable"]
        if all(d.split(":")[0] in self.output_keys for d in diff):
          return  # only how the outputs are written differs: the stages stay valid
        if not overwrite:
          raise ConfigMismatchError(
              f"workdir {self.path} holds a run with a different config ("
              + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "") + "). Use another "
              "--workdir, or pass --overwrite to discard the results stored there.")
        self._discard = True

  def commit(self) -> None:
    """Creates the workdir (deleting a discarded run's outputs) and writes config.json."""
    if self._committed:
      return
    self._committed = True
    logging.info("process %d of %d: %s %s", dist.process_index(), dist.process_count(),
                 "writes the outputs to" if self.write else "writes nothing (process 0 "
                 "writes) to", self.path)
    if not self.write:
      return
    try:
      os.makedirs(self.path, exist_ok=True)
    except OSError as e:
      raise ConfigError(f"cannot create workdir {self.path}: {e.strerror or e}.") from e
    if self._discard:
      logging.info("--overwrite: deleting the outputs of the other run in %s", self.path)
      remove_outputs(self.path)
    io_utils.atomic_write_json(os.path.join(self.path, "config.json"), self.config)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def _stage_path(self, name, ext):
    return os.path.join(self.path, "stages", f"{name}.{ext}")

  def add_rows_embedded(self, counts) -> None:
    """Adds each process's count of images run through a backbone (metrics.json)."""
    rows = self.parallelism["rows_embedded_per_process"]
    self.parallelism["rows_embedded_per_process"] = [int(a) + int(b)
                                                     for a, b in zip(rows, counts)]

  def _stage(self, name, ext, compute, dump, load, collective):
    """Loaded if `<workdir>/stages/<name>.<ext>` reads back, else computed and saved.

    `collective`: every process computes (the stage uses devices of every process);
    otherwise only process 0 does and sends its result to the others."""
    self.commit()
    path = self._stage_path(name, ext)
    data = b""
    if self.write and os.path.exists(path):
      try:
        with open(path, "rb") as f:
          data = f.read()
        load(data)
      except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        data = b""  # corrupt: recompute (atomic writes make this rare)
    data = dist.broadcast_bytes(data)
    if data:
      logging.info("stage %s: loaded from %s", name, path)
      return load(data)
    start = time.perf_counter()
    data = (dump(compute()) if collective or self.write else None)
    data = dist.broadcast_bytes(data)  # every process goes on with process 0's
    if self.write:
      io_utils.atomic_write_bytes(path, data)
    logging.info("stage %s: computed in %.2fs", name, time.perf_counter() - start)
    return load(data)

  def stage_arrays(self, name: str, compute: Callable[[], Mapping[str, Any]], *,
                   collective: bool = True) -> dict:
    """Arrays from `<workdir>/stages/<name>.npz` if complete, else computed and saved.

    Multi-process: `collective=True` (the default, always safe) runs `compute` on every
    process; `collective=False` (a stage of host-only work) runs it on process 0 alone."""
    dump = lambda out: dist.save_npz_bytes({k: np.asarray(v) for k, v in out.items()})
    return self._stage(name, "npz", compute, dump, dist.load_npz_bytes, collective)

  def stage_json(self, name: str, compute: Callable[[], Any], *,
                 collective: bool = True) -> Any:
    """A JSON-able result from `<workdir>/stages/<name>.json` if complete, else computed
    (`collective` as in `stage_arrays`)."""
    dump = lambda out: (json.dumps(to_json(out), indent=2, sort_keys=True, allow_nan=False)
                        + "\n").encode()
    return self._stage(name, "json", compute, dump, lambda data: json.loads(data.decode()),
                       collective)

  def write_json(self, name: str, obj) -> None:
    self.commit()
    if name == "metrics.json" and isinstance(obj, dict):
      obj = {**obj, "parallelism": self.parallelism}
    if self.write:
      io_utils.atomic_write_json(self.file(name), to_json(obj))

  def write_csv(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
    """Columns of equal length as a CSV with a header row."""
    self.commit()
    if not self.write:
      return
    keys = list(columns)
    cols = [np.asarray(columns[k]) for k in keys]
    lines = [",".join(keys)]
    for row in zip(*cols):
      lines.append(",".join(csv_cell(v) for v in row))
    io_utils.atomic_write_text(self.file(name), "\n".join(lines) + "\n")

  def savefig(self, name: str, fig) -> None:
    self.commit()
    plots.save_png(self.file(name), fig, self.write)


def remove_outputs(path: str) -> None:
  """Deletes a run's outputs in `path`: stages/ and every top-level .json/.csv/.png file
  (config.json, metrics.json, per_sample.csv, plots, leftover temporary files of those)."""
  shutil.rmtree(os.path.join(path, "stages"), ignore_errors=True)
  for entry in os.scandir(path):
    name = entry.name[:-4] if entry.name.endswith(".tmp") else entry.name
    if entry.is_file(follow_symlinks=False) and name.endswith(_OUTPUT_SUFFIXES):
      try:
        os.remove(entry.path)
      except FileNotFoundError:
        pass


def to_json(obj) -> Any:
  """`obj` as plain JSON values (NumPy scalars and arrays converted; NaN/inf -> None)."""
  return io_utils.finite_json(json.loads(json.dumps(obj, default=_to_builtin)))


def csv_cell(v) -> str:
  """One CSV cell: bools as 1/0, floats to 9 digits, text quoted if it holds , or "."""
  if isinstance(v, (bool, np.bool_)):
    return "1" if v else "0"
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.9g}"
  s = str(v)
  return f'"{s}"' if ("," in s or '"' in s) else s


def _to_builtin(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  raise TypeError(f"not JSON-serialisable: {type(o)}")
