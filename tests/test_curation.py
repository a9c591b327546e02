"""Curation algorithms on small synthetic problems where the right answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

import diva_jax
from diva_jax import curation


def _blobs(n=300, d=8, c=3, seed=0, sep=4.0):
  """Well separated Gaussian classes: a ridge head is near perfect on clean labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  means = rng.normal(size=(c, d)) * sep
  z = means[labels] + rng.normal(size=(n, d))
  return np.concatenate([z, np.ones((n, 1))], axis=1), labels, rng  # with a bias column


def _flip(labels, rate, c, rng):
  flipped = rng.uniform(size=len(labels)) < rate
  noisy = labels.copy()
  noisy[flipped] = (labels[flipped] + rng.integers(1, c, flipped.sum())) % c
  return noisy, flipped


def test_auroc_equals_sklearn_with_ties():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, 200).astype(float)
  y = rng.uniform(size=200) < 0.3
  np.testing.assert_allclose(curation.auroc(s, y), roc_auc_score(y, s), rtol=1e-12)
  with pytest.raises(ValueError, match="positives and negatives"):
    curation.auroc(s, np.zeros(200, bool))


def test_planted_mislabels_are_detected():
  z, labels, rng = _blobs()
  noisy, flipped = _flip(labels, 0.15, 3, rng)
  y = np.eye(3)[noisy]
  reg = diva_jax.select_reg(y, features=z).reg
  deriv = diva_jax.dataset_derivative(np.ones(300), y, features=z, reg=reg)
  m = curation.detection_metrics(deriv, flipped)
  assert m.auroc > 0.97 and m.f1 > 0.6 and m.recall > 0.9, m
  assert np.array_equal(curation.detect_detrimental(deriv), np.asarray(deriv) > 0)
  # A random score is no better than chance: the metric can fail.
  assert curation.detection_metrics(rng.normal(size=300), flipped).auroc < 0.65


def test_reweight_lowers_loo_loss_and_downweights_mislabels():
  z, labels, rng = _blobs(seed=1)
  noisy, flipped = _flip(labels, 0.2, 3, rng)
  y = np.eye(3)[noisy]
  res = curation.reweight(np.ones(300), y, features=z, reg=10.0, steps=2, learning_rate=0.2)
  assert res.losses.shape == (3,) and res.derivatives.shape == (2, 300)
  assert res.losses[1] < res.losses[0] and res.losses[2] < res.losses[0]
  assert np.all(res.weights >= 0)
  lowered = res.weights < 1.0
  assert lowered[flipped].mean() > 0.9 and lowered[~flipped].mean() < 0.1
  # Any optax optimizer: plain SGD with a step in the derivative's units.
  sgd = curation.reweight(np.ones(300), y, features=z, reg=10.0, steps=1,
                          optimizer=optax.sgd(0.1 / np.abs(res.derivatives[0]).max()))
  np.testing.assert_allclose(sgd.weights, np.maximum(0, 1 - 0.1 * res.derivatives[0]
                                                      / np.abs(res.derivatives[0]).max()),
                             rtol=1e-6)


def test_extend_picks_helpful_pool_and_duplicates_add_little():
  z, labels, rng = _blobs(n=400, seed=2)
  core = np.zeros(400, bool)
  core[:40] = True
  # Pool: the second half carries wrong labels; the first half is clean.
  noisy = labels.copy()
  bad = np.zeros(400, bool)
  bad[220:] = True
  noisy[bad] = (labels[bad] + 1) % 3
  y = np.eye(3)[noisy]
  # Cross-entropy: with a squared error on one-hot targets the first-order effect of a
  # wrong label (weight 0 -> epsilon) can be helpful while the full step (0 -> 1) hurts.
  res = curation.extend(core, y, features=z, reg=5.0, k=20, budget=100, loss="ce")
  assert 20 <= len(res.selected) <= 100
  assert res.stopped == ("budget" if len(res.selected) == 100 else "no_helpful_sample")
  assert not np.any(core[res.selected])
  assert np.mean(bad[res.selected]) < 0.1  # picks clean pool samples
  assert np.all(res.weights[res.selected] == 1) and res.weights[core].all()
  # A pool made only of exact duplicates of the core adds little on held-out data (it brings
  # no new information), while the same number of fresh clean samples does.
  test_z, test_labels, _ = _blobs(n=400, seed=2)  # same class means (same seed), fresh noise
  test_z = test_z + np.random.default_rng(7).normal(size=test_z.shape) * np.r_[np.ones(8), 0]
  err = lambda w: np.mean(np.argmax(diva_jax.ridge_predict(
      w, y, features=z, reg=5.0, test_features=test_z), 1) != test_labels)
  z2 = np.concatenate([z[:20], z[:20], z[40:220]])  # core 20, pool: 20 duplicates + fresh
  y2 = np.concatenate([y[:20], y[:20], y[40:220]])
  core2 = np.arange(220) < 20
  dup_only = curation.extend(core2[:40], y2[:40], features=z2[:40], reg=5.0, k=5, loss="ce")
  assert dup_only.stopped in ("budget", "no_helpful_sample")
  def err2(selected):
    w = np.zeros(400)
    w[:20] = 1.0
    picked = np.asarray(selected, int)
    w[np.where(picked < 40, picked - 20, picked)] = 1.0  # map back onto z (duplicates -> core)
    return err(w)
  fresh = curation.extend(core2, y2, features=z2, reg=5.0, k=5, budget=20, loss="ce")
  core_err = err2([])
  assert err2(dup_only.selected) >= core_err - 0.01  # duplicates: no real gain
  assert err2(fresh.selected) < core_err - 0.02 or core_err < 0.03


def test_extend_bad_input():
  z, labels, _ = _blobs(n=30)
  y = np.eye(3)[labels]
  core = np.arange(30) < 10
  with pytest.raises(ValueError, match=r"budget must be in \[0, pool size = 20\], got 21"):
    curation.extend(core, y, features=z, reg=1.0, budget=21)
  with pytest.raises(ValueError, match="core set is empty"):
    curation.extend(np.zeros(30, bool), y, features=z, reg=1.0)
  with pytest.raises(ValueError, match="k must be an int >= 1"):
    curation.extend(core, y, features=z, reg=1.0, k=0)


def test_group_derivative_is_chain_rule_of_group_weights():
  z, labels, rng = _blobs(n=120, seed=3)
  y = np.eye(3)[labels]
  groups = rng.integers(0, 4, 120)
  b = jnp.asarray([1.0, 0.5, 2.0, 1.5])
  f = lambda bb: diva_jax.loo_loss(bb[groups], y, features=z, reg=2.0)
  expected = jax.grad(f)(b)
  deriv = diva_jax.dataset_derivative(np.asarray(b)[groups], y, features=z, reg=2.0)
  # d/db_g = sum over members of dL/da_i (a_i = b_g).
  np.testing.assert_allclose(curation.group_derivative(deriv, groups, 4), expected, rtol=1e-9)


def test_rebalancing_and_augmentation_tuning_prefer_the_useful_group():
  z, labels, rng = _blobs(n=200, seed=4)
  y = np.eye(3)[labels]
  # Transform 0: identity; transform 1: features replaced by noise (a harmful augmentation).
  noise = rng.normal(size=z.shape) * 4.0
  probs, res = curation.tune_augmentations(np.stack([z, noise]), y, reg=5.0, steps=1,
                                          learning_rate=0.2)
  assert probs.shape == (2,) and abs(probs.sum() - 1) < 1e-9
  gd = res.group_derivatives[0]
  assert gd[0] < 0 < gd[1]  # the identity helps, the noise hurts
  assert probs[0] > 0.55, probs
  assert res.losses[-1] < res.losses[0]
  with pytest.raises(ValueError, match=r"\[t, n, d\]"):
    curation.tune_augmentations(z, y, reg=1.0)
