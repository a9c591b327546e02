"""Helpers shared by the user-data sources (`user_data`: image folders and CSVs;
`user_embeddings`: embedding files): the source kind, listings in messages, id checks."""

from __future__ import annotations

import collections
import os
from typing import Sequence

_MAX_LISTED = 10


def source_kind(source: str) -> str:
  """``'folder'`` (an existing directory), ``'csv'``, ``'npz'``, ``'npy'`` (by suffix,
  case-insensitive), else ``'tfds'`` (a dataset name)."""
  if os.path.isdir(source):
    return "folder"
  suffix = os.path.splitext(source)[1].lower()
  return {".csv": "csv", ".npz": "npz", ".npy": "npy"}.get(suffix, "tfds")


def _singular(what: str) -> str:
  """``"rows are out of range"`` -> ``"row is out of range"`` (the phrases `_listing` gets)."""
  head, sep, rest = what.partition(" ")
  if head.endswith("s") and head not in ("are", "is"):
    head = head[:-1]
  out = f" {head}{sep}{rest} "
  for plural, one in ((" are ", " is "), (" name ", " names "), (" do not ", " does not "),
                      (" hold ", " holds ")):
    out = out.replace(plural, one)
  return out.strip()


def _listing(items: Sequence, what: str) -> str:
  """``"3 rows: [1, 2, 3]"`` (``"1 row: [1]"``), at most ``_MAX_LISTED`` items shown."""
  more = f" ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
  what = _singular(what) if len(items) == 1 else what
  return f"{len(items)} {what}: {list(items[:_MAX_LISTED])}{more}"


def _one_sample_warning(name: str, noun: str) -> str:
  return (f"class {name!r} has 1 {noun}: its leave-one-out prediction cannot see its own "
          "class")


def _check_unique(ids: list[str], source: str, hint: str = "") -> None:
  dups = [i for i, c in collections.Counter(ids).items() if c > 1]
  if dups:
    raise ValueError(f"{source!r}: ids must be unique; {_listing(dups, 'are repeated')}{hint}")
