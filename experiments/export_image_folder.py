r"""Writes a dataset as a class-folder tree of PNG files (optionally with planted label noise):
the input `experiments.curate` takes from users, made from data that ship with the project.

  python -m experiments.export_image_folder --dataset=mnist5k --out=/tmp/mnist5k_folder \
      --noise_rate=0.2 --seed=0

Every split of the dataset is written (mnist5k: 5,000 images); a sample whose label is flipped
goes into the folder of its noisy label, and `<out>.planted_noise.json` (beside the folder, so
the folder holds images only) lists those files: the ground truth for scoring a curation run.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from diva_jax.app import cli

_DATASET = flags.DEFINE_string("dataset", "mnist5k", "mnist5k | digits | animal_mnist | TFDS name")
_OUT = flags.DEFINE_string("out", None, "Output folder (created; must not exist).", required=True)
_NOISE = flags.DEFINE_float("noise_rate", 0.2, "Fraction of labels flipped uniformly.")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")


def export(dataset: str, out: str, noise_rate: float, seed: int) -> dict:
  """Writes the folder tree; returns {'images': n, 'flipped': [relative paths]}."""
  from diva_jax import data
  if os.path.exists(out):
    raise ValueError(f"--out {out} exists: choose a new folder.")
  if not 0.0 <= noise_rate < 1.0:
    raise ValueError(f"--noise_rate must be in [0, 1), got {noise_rate}.")
  images, labels = [], []
  for split in ("train", "test"):
    ds = data.load(dataset, split)
    images.append(ds.images)
    labels.append(ds.labels)
  images, labels = np.concatenate(images), np.concatenate(labels)
  names = [str(c) for c in ds.class_names]
  noise = data.uniform_label_noise(labels, len(names), noise_rate, seed)
  flipped = []
  for k, (img, lab) in enumerate(zip(images, noise.labels)):
    rel = f"{names[lab]}/{k:05d}.png"
    os.makedirs(os.path.join(out, names[lab]), exist_ok=True)
    Image.fromarray(np.squeeze(img)).save(os.path.join(out, rel))
    if noise.flipped[k]:
      flipped.append(rel)
  with open(out.rstrip("/") + ".planted_noise.json", "w") as f:
    json.dump({"dataset": dataset, "noise_rate": noise_rate, "seed": seed, "flipped": flipped}, f)
  return {"images": len(images), "flipped": flipped}


def main(argv):
  cli.quiet_libraries()
  del argv
  res = export(_DATASET.value, _OUT.value, _NOISE.value, _SEED.value)
  print(f"wrote {res['images']} images to {_OUT.value} ({len(res['flipped'])} labels flipped; "
        f"listed in {_OUT.value.rstrip('/')}.planted_noise.json)")


if __name__ == "__main__":
  cli.quiet_by_default()
  app.run(main)
