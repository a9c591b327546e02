"""Atomic file writes: nothing half-written is ever visible under the final name.

Each writer writes to a temporary file in the destination's directory (same filesystem),
flushes and fsyncs it, then ``os.replace``-s it onto the final path (atomic on POSIX and
Windows). On any error the temporary file is removed and the old file, if any, is intact.
The final file gets the permissions any other tool would create it with (``0o666`` less the
process umask), not ``tempfile.mkstemp``'s private ``0o600``.

JSON is written strictly (``allow_nan=False``): non-finite floats become ``null``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process umask (read without changing it where /proc allows, else set and restored)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
  """Opens a temporary file that replaces ``path`` atomically when the block exits cleanly.

  Args:
    path: the final destination; its directory is created if missing.
    mode: ``"wb"`` or ``"w"``.

  Yields:
    A writable file object.
  """
  if mode not in ("wb", "w"):
    raise ValueError(f"mode must be 'wb' or 'w'; got {mode!r}")
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0o600 -> what open() would give
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
  """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None`` (JSON ``null``)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_json(v) for v in obj]
  return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs) -> None:
  """Writes ``obj`` as strict JSON (indented, sorted keys by default) to ``path`` atomically.

  Non-finite floats are written as ``null`` (``NaN`` is not JSON); ``allow_nan=False``.
  """
  json_kwargs.setdefault("indent", 2)
  json_kwargs.setdefault("sort_keys", True)
  json_kwargs["allow_nan"] = False
  atomic_write_text(path, json.dumps(finite_json(obj), **json_kwargs) + "\n")


def atomic_save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                    compressed: bool = False) -> None:
  """Saves named arrays as ``.npz`` to ``path`` atomically (``path`` used verbatim)."""
  save = np.savez_compressed if compressed else np.savez
  with atomic_open(path, "wb") as f:
    save(f, **{k: np.asarray(v) for k, v in arrays.items()})
