"""Label-preserving views of images for detection: small shifts.

A sample's features averaged over a few shifted copies of its image describe it more stably
than one view. In the removal study (README, "Thirteen label-free curations") the derivative
taken on such averaged features raised F1 on all five settings and brought removal closer to
removing exactly the noisy samples on four (not on 8x8 digits); the refit itself stays on the
original features.
"""

from __future__ import annotations

import numpy as np

__all__ = ["shift_images", "shift_offsets"]


def _check_images(images) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or min(x.shape[1:3]) < 2:
    raise ValueError(f"images must be [n, height, width, channels] with height, width >= 2, "
                     f"got shape {x.shape}.")
  return x


def shift_offsets(height: int, width: int, fraction: float = 0.07) -> tuple:
  """The four axis shifts (dy, dx) = (+-s, 0), (0, +-s), s = max(1, round(fraction * min
  side)), for images of the given size (0.07: 2 pixels at 28, 1 at 8, 16 at 224)."""
  if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
          and 0 < fraction < 0.5):
    raise ValueError(f"fraction must be a number in (0, 0.5), got {fraction!r}.")
  for name, v in (("height", height), ("width", width)):
    if not isinstance(v, (int, np.integer)) or v < 2:
      raise ValueError(f"{name} must be an integer >= 2, got {v!r}.")
  s = max(1, int(round(fraction * min(height, width))))
  return ((s, 0), (-s, 0), (0, s), (0, -s))


def shift_images(images, dy: int, dx: int) -> np.ndarray:
  """[n, h, w, c] images shifted by dy rows down and dx columns right, the uncovered border
  filled by repeating the edge pixels (the content leaving the frame is dropped). Same dtype.
  """
  x = _check_images(images)
  h, w = x.shape[1:3]
  if abs(int(dy)) >= h or abs(int(dx)) >= w:
    raise ValueError(f"a shift must be smaller than the image: |dy| < {h}, |dx| < {w}, got "
                     f"dy={dy}, dx={dx}.")
  dy, dx = int(dy), int(dx)
  padded = np.pad(x, ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0)),
                  mode="edge")
  top, left = max(-dy, 0), max(-dx, 0)
  return padded[:, top:top + h, left:left + w]
