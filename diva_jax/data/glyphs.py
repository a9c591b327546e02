"""Printed digits rendered from the TrueType fonts that ship with matplotlib.

A second "modality" for the handwritten digit sets: the glyphs of '0'..'9' in several
typefaces, jittered (scale, rotation, offset), white on black like MNIST. It plays the role
that CLIP text embeddings of class names play in the DIVA paper's multi-modal experiment:
clean, prototypical, but from another distribution than the core images.
"""

from __future__ import annotations

import os

import numpy as np

from diva_jax import _optional

__all__ = ["DEFAULT_FONTS", "font_paths", "render_digits"]

DEFAULT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "cmr10.ttf",
    "cmss10.ttf",
)


def font_paths(names=DEFAULT_FONTS) -> list[str]:
  """Paths of matplotlib's bundled fonts with these file names (missing ones are skipped)."""
  matplotlib = _optional.require("matplotlib", "the printed-digit glyphs")
  root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
  paths = [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n))]
  if not paths:
    raise FileNotFoundError(f"none of the fonts {list(names)} found under {root}")
  return paths


def render_digits(per_class: int = 50, size: int = 28, seed: int = 0,
                  fonts=DEFAULT_FONTS) -> tuple[np.ndarray, np.ndarray]:
  """Renders `per_class` jittered glyphs of each digit 0-9.

  Args:
    per_class: images per digit (fonts are cycled; each image gets its own jitter).
    size: output height and width in pixels.
    seed: jitter seed.
    fonts: font file names among matplotlib's bundled fonts.

  Returns:
    (images uint8 [10 * per_class, size, size, 1], labels int64 [10 * per_class]).
  """
  _optional.require("PIL", "the printed-digit glyphs")
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  if per_class < 1 or size < 8:
    raise ValueError(f"per_class must be >= 1 and size >= 8, got {per_class} and {size}.")
  paths = font_paths(fonts)
  rng = np.random.default_rng(seed)
  canvas = 4 * size
  images, labels = [], []
  for digit in range(10):
    for j in range(per_class):
      font = ImageFont.truetype(paths[j % len(paths)], int(canvas * rng.uniform(0.55, 0.8)))
      im = Image.new("L", (canvas, canvas), 0)
      draw = ImageDraw.Draw(im)
      left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
      xy = ((canvas - (right - left)) / 2 - left, (canvas - (bottom - top)) / 2 - top)
      draw.text(xy, str(digit), fill=255, font=font)
      im = im.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
      dx, dy = rng.integers(-size // 10, size // 10 + 1, 2) * 4
      im = im.transform(im.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy))
      im = im.resize((size, size), Image.Resampling.LANCZOS)
      images.append(np.asarray(im, np.uint8)[..., None])
      labels.append(digit)
  return np.stack(images), np.asarray(labels, np.int64)
