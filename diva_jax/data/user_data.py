"""The user's own data: an image folder, an image CSV or precomputed embeddings.

This module turns what a user has on disk into arrays, and does nothing else: no backbone,
no curation. Bad input gives a clear ``ValueError`` or a listed ``skipped`` file /
``warnings`` entry, never a crash or a silent drop.

* ``root/<class>/<...>/<image>`` folders: :func:`load_image_folder`;
* a ``path,label[,id]`` CSV (header optional, paths relative to the CSV's folder):
  :func:`load_image_csv`;
* ``.npz`` / ``.npy`` embeddings with labels: :func:`load_embeddings`.

Every image is decoded fully (PIL, truncated files detected), EXIF-rotated, converted to
RGB (alpha composited on white, 16-bit and float images rescaled to 8 bits) and resized
(bilinear, aspect not kept) like the backbone pipeline of :mod:`diva_jax.data.loading`.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import unicodedata
from typing import NamedTuple, Sequence

import numpy as np

from diva_jax import _optional
from diva_jax.data import loading
from diva_jax.data.user_common import _check_unique
from diva_jax.data.user_common import _listing
from diva_jax.data.user_common import _one_sample_warning
from diva_jax.data.user_common import source_kind
from diva_jax.data.user_embeddings import UserEmbeddings  # noqa: F401  (re-exported)
from diva_jax.data.user_embeddings import load_embeddings  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".heic", ".heif"})


class SkippedFile(NamedTuple):
  """An image file that was not loaded: ``path`` as reported in ``paths``, and why."""
  path: str
  reason: str


class UserImages(NamedTuple):
  """Labelled images read from a folder or a CSV.

  Attributes:
    images: ``[n, size, size, 3]`` uint8 RGB.
    labels: ``[n]`` int64 indices into ``class_names``.
    class_names: sorted folder names / sorted distinct CSV labels, each with >= 1 image.
    ids: per sample, the CSV id column if given, else the path.
    paths: per sample, relative to the folder root (``/``-separated) or as in the CSV.
    skipped: files not loaded, with the reason, sorted by path.
    warnings: human-readable notes (empty or one-image classes...).
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  ids: list[str]
  paths: list[str]
  skipped: list[SkippedFile]
  warnings: list[str]


@contextlib.contextmanager
def _strict_decoding():
  """Truncated files raise while decoding, whatever ``LOAD_TRUNCATED_IMAGES`` says."""
  ImageFile = _optional.require("PIL.ImageFile", "reading image files")
  old = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = old


def _to_rgb(im) -> np.ndarray:
  """Any PIL image -> ``[h, w, 3]`` uint8 RGB (alpha on white, 16-bit/float rescaled)."""
  _optional.require("PIL", "reading image files")
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  im = ImageOps.exif_transpose(im)  # also forces the full decode
  if im.mode.startswith("I") or im.mode == "F":  # I;16*, I, F: one channel, wide range
    a = np.asarray(im, np.float64).reshape(im.size[::-1])
    top = a.max(initial=0.0)
    if im.mode.startswith("I;16") or top > 255:
      a = a / 257.0
    elif im.mode == "F" and top <= 1.0:
      a = a * 255.0
    a = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(im.convert("RGB"))


def _decode(file: str, size: int) -> tuple[np.ndarray | None, str]:
  """``([size, size, 3] uint8, "")``, or ``(None, reason)`` when it cannot be read."""
  Image = _optional.require("PIL.Image", "reading image files")
  try:
    with Image.open(file) as im:
      rgb = _to_rgb(im)
    return loading._resize(np.ascontiguousarray(rgb), size), ""  # pylint: disable=protected-access
  except (MemoryError, KeyboardInterrupt):
    raise
  except Exception as e:  # pylint: disable=broad-except
    message = f"{type(e).__name__}: {e}"
    return None, ("truncated: " if "truncated" in message.lower() else "cannot decode: ") + message


class _Entry(NamedTuple):
  label: str
  path: str  # as reported
  file: str  # to open
  id: str


def _subset_order(entries: list[_Entry]) -> list[int]:
  """The order in which a `max_images` subset is taken: round-robin over the classes, each
  class in the order of a hash of its samples' paths. The subset is deterministic, the same
  for a folder and a CSV of the same files, and balanced over the classes (a prefix of a
  class-sorted listing would hold only the first classes)."""
  digest = lambda p: hashlib.sha1(p.encode("utf-8")).hexdigest()
  by_class: dict[str, list[int]] = {}
  for i, e in enumerate(entries):
    by_class.setdefault(e.label, []).append(i)
  rank = {}
  for members in by_class.values():
    for r, i in enumerate(sorted(members, key=lambda i: (digest(entries[i].path), i))):
      rank[i] = r
  return sorted(range(len(entries)), key=lambda i: (rank[i], entries[i].label, i))


def _assemble(entries: list[_Entry], selection: Sequence[int], all_classes: list[str], *,
              size: int, max_images: int, skipped: list[SkippedFile],
              warnings: list[str], source: str, noun: str) -> UserImages:
  """Decodes ``entries`` in ``selection`` order (up to ``max_images`` readable ones)."""
  loaded: dict[int, np.ndarray] = {}
  tried = set()
  with _strict_decoding():
    for i in selection:
      if max_images and len(loaded) >= max_images:
        break
      tried.add(entries[i].label)
      image, reason = _decode(entries[i].file, size)
      if image is None:
        skipped.append(SkippedFile(entries[i].path, reason))
      else:
        loaded[i] = image
  kept = sorted(loaded)
  skipped.sort(key=lambda f: f.path)
  class_names = sorted({entries[i].label for i in kept})
  warnings.extend(
      f"{noun} {name!r} has no readable image (skipped: left out of class_names)"
      if name in tried or not max_images else f"class {name!r} has no image among the "
      f"first max_images={max_images} (left out of class_names)"
      for name in all_classes if name not in class_names)
  if not kept:
    reasons = [f"{s.path}: {s.reason}" for s in skipped]
    raise ValueError(f"no readable image in {source!r}" +
                     (f"; {_listing(reasons, 'files skipped')}" if reasons else ""))
  if len(class_names) < 2:
    raise ValueError(f"{source!r} has {len(class_names)} class with readable images "
                     f"({class_names}); at least 2 classes are needed")
  index = {name: k for k, name in enumerate(class_names)}
  labels = np.asarray([index[entries[i].label] for i in kept], np.int64)
  counts = np.bincount(labels, minlength=len(class_names))
  warnings.extend(_one_sample_warning(name, "image")
                  for name, c in zip(class_names, counts) if c == 1)
  return UserImages(
      images=np.stack([loaded[i] for i in kept]), labels=labels, class_names=class_names,
      ids=[entries[i].id for i in kept], paths=[entries[i].path for i in kept],
      skipped=skipped, warnings=warnings)


def load_image_folder(root: str, *, size: int, max_images: int = 0) -> UserImages:
  """Reads ``root/<class>/<image>`` (class subfolders may nest further folders).

  Hidden files and folders (names starting with ``.``) are ignored. Other files with a
  suffix outside :data:`IMAGE_SUFFIXES`, files directly in ``root`` and unreadable or
  truncated images are listed in ``skipped``. A class folder without a readable image is
  left out of ``class_names`` (a warning says so).

  Args:
    root: the folder; class names are its subfolder names.
    size: output images are ``[size, size, 3]``.
    max_images: if > 0, a deterministic subset of ``max_images`` readable images, balanced
      over the classes (`_subset_order`).

  Returns:
    :class:`UserImages`, samples sorted by (class folder name, relative path); ``ids`` and
    ``paths`` are the ``/``-separated paths relative to ``root``.

  Raises:
    ValueError: ``root`` is not a folder, has no class folder, no readable image, or
      fewer than 2 classes with readable images.
  """
  if not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  if not os.path.isdir(root):
    raise ValueError(f"{root!r} is not a folder (expected root/<class>/<image files>)")
  skipped: list[SkippedFile] = []
  entries: list[_Entry] = []
  classes = []
  for name in sorted(os.listdir(root)):
    if name.startswith("."):
      continue
    full = os.path.join(root, name)
    if not os.path.isdir(full):
      skipped.append(SkippedFile(name, "not inside a class folder"))
      continue
    classes.append(name)
    found = []
    for dirpath, dirnames, filenames in os.walk(full, followlinks=True):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
      found.extend(f"{rel_dir}/{f}" for f in filenames if not f.startswith("."))
    for rel in sorted(found):
      suffix = os.path.splitext(rel)[1].lower()
      if suffix not in IMAGE_SUFFIXES:
        skipped.append(SkippedFile(rel, f"not an image file (suffix {suffix!r})"))
      else:
        entries.append(_Entry(name, rel, os.path.join(root, *rel.split("/")), rel))
  if not classes:
    raise ValueError(f"{root!r} has no class folder (expected root/<class>/<image files>)")
  return _assemble(entries, _subset_order(entries), classes, size=size,
                   max_images=max_images, skipped=skipped, warnings=[], source=root,
                   noun="class folder")


def _existing(file: str) -> str | None:
  """``file``, or its NFC/NFD spelling (CSV vs macOS file names), if it exists."""
  for form in (None, "NFC", "NFD"):
    candidate = unicodedata.normalize(form, file) if form else file
    if os.path.isfile(candidate):
      return candidate
  return None


def load_image_csv(csv_path: str, *, size: int, max_images: int = 0) -> UserImages:
  """Reads a CSV of ``path,label[,id]`` rows (UTF-8, optional header).

  A first row whose first field is ``path`` is a header. Paths are relative to the CSV's
  folder (absolute paths work too); labels and ids are strings. Blank lines are ignored.

  Args:
    csv_path: the CSV file.
    size: output images are ``[size, size, 3]``.
    max_images: if > 0, a deterministic subset of ``max_images`` readable images, balanced
      over the classes (as for folders: `_subset_order`), returned in CSV order.

  Returns:
    :class:`UserImages` in CSV row order; ``class_names`` are the sorted distinct labels
    with a readable image; ``paths`` are as written; ``ids`` the id column, else the paths.

  Raises:
    ValueError: rows with a wrong number of columns or an empty path/label, rows whose
      file is missing (1-based line numbers and paths listed), duplicate ids, no readable
      image, or fewer than 2 classes.
  """
  if not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  if not os.path.isfile(csv_path):
    raise ValueError(f"CSV file {csv_path!r} does not exist")
  base = os.path.dirname(os.path.abspath(csv_path))
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    rows = [(reader.line_num, [c.strip() for c in row]) for row in reader]
  rows = [(line, row) for line, row in rows if any(row)]
  width = len(rows[0][1]) if rows and len(rows[0][1]) in (2, 3) else 2
  if rows and rows[0][1][0].lower() == "path":  # a header
    rows = rows[1:]
  bad = [line for line, row in rows if len(row) != width or not row[0] or not row[1]]
  if bad:
    raise ValueError(
        f"{csv_path!r}: expected {width} columns (path,label{',id' if width == 3 else ''})"
        f" with a non-empty path and label; {_listing(bad, 'rows (line numbers) do not')}")
  entries, missing = [], []
  for line, row in rows:
    file = _existing(os.path.join(base, row[0]))
    if file is None:
      missing.append((line, row[0]))
    entries.append(_Entry(row[1], row[0], file or "", row[2] if width == 3 else row[0]))
  if missing:
    relative = any(not os.path.isabs(path) for _, path in missing)
    raise ValueError(f"{csv_path!r}: {_listing(missing, 'rows (line, path) name a missing file')}"
                     + (f" (relative paths are read from {base!r})" if relative else ""))
  if not entries:
    raise ValueError(f"{csv_path!r} has no data row (expected path,label[,id] rows)")
  _check_unique([e.id for e in entries], csv_path, "" if width == 3 else " (add an id column)")
  return _assemble(entries, _subset_order(entries), sorted({e.label for e in entries}), size=size,
                   max_images=max_images, skipped=[], warnings=[], source=csv_path,
                   noun="class")

