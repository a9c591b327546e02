"""Read a legacy (pre-zip) PyTorch ``.pth`` state dict without PyTorch.

The legacy serialisation written by ``torch.save(..., _use_new_zipfile_serialization=False)``
is a sequence of pickles followed by raw storage bytes::

  pickle(MAGIC_NUMBER)  pickle(PROTOCOL_VERSION)  pickle(sys_info)
  pickle(obj)           # tensors appear as persistent ids into typed storages
  pickle([storage keys])
  for each key: int64 element count, then count * itemsize raw bytes (little endian)

A tensor inside ``obj`` is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`` where ``storage`` is the persistent id ``('storage', StorageType, key, location,
numel)``. This module rebuilds every tensor as a read-only NumPy array, and never imports
torch: only an allow-list of globals is honoured, so a malicious pickle cannot run code.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchPickleError(ValueError):
  """The file is not a readable legacy PyTorch state dict (corrupt or other format)."""


class _StorageType:
  """Stand-in for ``torch.FloatStorage`` etc.: remembers the NumPy dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A lazily-filled typed storage, identified by its key in the file."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.array: np.ndarray | None = None


class _TensorRef:
  """A tensor waiting for its storage bytes: (storage, offset, size, stride)."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)

  def materialise(self) -> np.ndarray:
    base = self.storage.array
    assert base is not None
    itemsize = base.dtype.itemsize
    needed = self.offset + 1 + sum((s - 1) * st for s, st in zip(self.size, self.stride))
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, base.dtype)
    if needed > base.size:
      raise TorchPickleError(
          f"tensor of size {self.size} at offset {self.offset} overruns its storage "
          f"of {base.size} elements")
    out = np.lib.stride_tricks.as_strided(
        base[self.offset:], shape=self.size,
        strides=tuple(st * itemsize for st in self.stride))
    out = np.array(out)  # own, contiguous copy
    out.flags.writeable = False
    return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused_args):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused_args):
  del requires_grad, backward_hooks
  return data


class _Unpickler(pickle.Unpickler):
  """Unpickler honouring only the globals a state dict needs."""

  def __init__(self, f: BinaryIO, storages: dict[str, _Storage]):
    super().__init__(f, encoding="latin1")
    self._storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise TorchPickleError(f"unsupported global in checkpoint pickle: {module}.{name}")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise TorchPickleError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if len(pid) > 5 and pid[5] is not None:
      raise TorchPickleError("storage views are not supported")
    if key not in self._storages:
      self._storages[key] = _Storage(storage_type.dtype, int(numel))
    return self._storages[key]


def _load_plain(f: BinaryIO) -> Any:
  return _Unpickler(f, {}).load()


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a legacy-format PyTorch state dict as NumPy arrays, without torch.

  Args:
    path: a ``.pth`` file written by ``torch.save`` in the legacy (non-zip) format.

  Returns:
    An ordered ``{name: array}`` dict; arrays are read-only, C-contiguous, little-endian
    copies with the tensor's shape and dtype (e.g. ``float32`` for ``FloatStorage``).

  Raises:
    TorchPickleError: if the file is truncated, corrupt, zip-format, or holds anything but
      tensors in (ordered) dicts.
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"PK":
    raise TorchPickleError(
        f"{os.fspath(path)!r} is a zip-format torch checkpoint; only the legacy format "
        "is supported")
  f = io.BytesIO(data)
  try:
    magic = _load_plain(f)
    if magic != _MAGIC_NUMBER:
      raise TorchPickleError(f"bad magic number {magic!r}, expected {_MAGIC_NUMBER:#x}")
    version = _load_plain(f)
    if version != _PROTOCOL_VERSION:
      raise TorchPickleError(f"unsupported protocol version {version!r}")
    sys_info = _load_plain(f)
    if not sys_info.get("little_endian", True):
      raise TorchPickleError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = _load_plain(f)
    for key in keys:
      (numel,) = struct.unpack("<q", f.read(8))
      storage = storages[key]
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if numel != storage.numel or len(raw) != nbytes:
        raise TorchPickleError(
            f"storage {key!r}: expected {storage.numel} elements, found {numel} "
            f"({len(raw)} of {nbytes} bytes present): the file is truncated or corrupt")
      storage.array = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
  except TorchPickleError:
    raise
  except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError,
          TypeError, ValueError, IndexError) as e:
    raise TorchPickleError(
        f"cannot read {os.fspath(path)!r} as a legacy torch state dict: "
        f"{type(e).__name__}: {e}") from e
  if any(s.array is None for s in storages.values()):
    raise TorchPickleError("some storages have no data: the file is truncated")
  if not isinstance(obj, dict):
    raise TorchPickleError(f"expected a state dict, got {type(obj).__name__}")
  out = collections.OrderedDict()
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise TorchPickleError(f"entry {name!r} is a {type(value).__name__}, not a tensor")
    out[name] = value.materialise()
  return out
