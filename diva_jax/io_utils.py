"""Atomic file writes: nothing half-written is ever visible under the final name.

Each writer writes to a temporary file in the destination's directory (same filesystem),
flushes and fsyncs it, then ``os.replace``-s it onto the final path (atomic on POSIX and
Windows). On any error the temporary file is removed and the old file, if any, is intact.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np


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


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs) -> None:
  """Writes ``obj`` as JSON (indented, sorted keys by default) to ``path`` atomically."""
  json_kwargs.setdefault("indent", 2)
  json_kwargs.setdefault("sort_keys", True)
  atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def atomic_save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                    compressed: bool = False) -> None:
  """Saves named arrays as ``.npz`` to ``path`` atomically (``path`` used verbatim)."""
  save = np.savez_compressed if compressed else np.savez
  with atomic_open(path, "wb") as f:
    save(f, **{k: np.asarray(v) for k, v in arrays.items()})
