"""Write a synthetic IN.npz for run_peers.py (numpy only; runs in either venv).

A 10-class Gaussian mixture that looks like last-layer embeddings: class
means and within-class noise live in an r-dimensional latent space (r=32)
mapped to d dimensions (d=1281 mimics 1280 features + a constant bias column)
by a fixed random matrix, plus small isotropic noise. A fraction of the labels
is flipped uniformly to another class in both the training and the validation
set.

    python make_synthetic.py --out case.npz --n 1000 --m 1000 --d 1281 --noise 0.1

The file also stores `flipped` (bool [n]) so the caller can score detection.
"""
import argparse

import numpy as np


def make(n, m, d, n_classes=10, noise=0.1, sep=0.6, seed=0, k=10, latent=32):
  rng = np.random.default_rng(seed)
  means = rng.normal(scale=sep, size=(n_classes, latent))
  proj = rng.normal(size=(latent, d - 1)) / np.sqrt(latent)

  def draw(count):
    y = rng.integers(0, n_classes, size=count)
    z = means[y] + rng.normal(size=(count, latent))
    x = z @ proj + 0.3 * rng.normal(size=(count, d - 1))
    x = np.hstack([x, np.ones((count, 1))])
    flip = rng.random(count) < noise
    shift = rng.integers(1, n_classes, size=count)
    y_noisy = np.where(flip, (y + shift) % n_classes, y)
    return x.astype(np.float32), y_noisy.astype(np.int64), flip

  x_train, y_train, flipped = draw(n)
  x_val, y_val, _ = draw(m)
  return dict(x_train=x_train,
              y_train=y_train,
              x_val=x_val,
              y_val=y_val,
              k=np.int64(k),
              flipped=flipped)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--m", type=int, default=1000)
  p.add_argument("--d", type=int, default=1281)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--noise", type=float, default=0.1)
  p.add_argument("--sep", type=float, default=0.6)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  data = make(a.n, a.m, a.d, a.classes, a.noise, a.sep, a.seed, a.k)
  np.savez(a.out, **data)
  print(f"wrote {a.out}: n={a.n} m={a.m} d={a.d} flipped={int(data['flipped'].sum())}")


if __name__ == "__main__":
  main()
