"""`find_label_issues` (the default rule in one call) and `refit_test_error`, against float64
brute-force refits and finite differences written here in NumPy, independent of the library's
closed form."""

import numpy as np
import pytest

import diva_jax
from diva_jax.curation import detect


def _data(n=48, d=12, c=3, flips=6, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  x = np.eye(c)[labels] @ rng.normal(size=(c, d)) * 1.5 + rng.normal(size=(n, d))
  noisy = labels.copy()
  noisy[:flips] = (noisy[:flips] + 1) % c
  return x.astype(np.float64), noisy, labels


def _fit(x, y, a, reg):
  """W minimising sum_i a_i ||W^T x_i - y_i||^2 + reg ||W||^2 (a float64 solve)."""
  return np.linalg.solve(x.T @ (a[:, None] * x) + reg * np.eye(x.shape[1]), x.T @ (a[:, None] * y))


def _brute_loo(x, y, a, reg):
  """Row i: the refit without sample i (weight 0), evaluated at x_i."""
  out = np.zeros_like(y)
  for i in range(len(y)):
    b = a.copy()
    b[i] = 0.0
    out[i] = x[i] @ _fit(x, y, b, reg)
  return out


def _ce_loss(x, y, a, reg, t, outer="weighted"):
  """The LOO cross-entropy of brute-force refits; "weighted": the outer mean weighted by a."""
  f = _brute_loo(x, y, a, reg) / t
  f = f - f.max(1, keepdims=True)
  logp = f - np.log(np.exp(f).sum(1, keepdims=True))
  per = -np.sum(y * logp, 1)
  return float(np.sum(a * per) / np.sum(a)) if outer == "weighted" else float(np.mean(per))


def _hat_trace(x, reg):
  return float(np.trace(x @ np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T)))


def _auto_multiplier(x, reg):
  return float(np.clip(100.0 * _hat_trace(x, reg) / x.shape[0], 1.0, 10.0))


def test_degrees_of_freedom_is_the_hat_matrix_trace_in_every_form():
  rng = np.random.default_rng(4)
  tall, wide = rng.normal(size=(30, 7)), rng.normal(size=(9, 25))  # primal, Gram-dual
  for x in (tall, wide):
    for reg in (1e-3, 0.7, 50.0):
      want = _hat_trace(x, reg)
      assert diva_jax.loo.reg.degrees_of_freedom(features=x, reg=reg) == pytest.approx(
          want, rel=1e-9)
      assert diva_jax.loo.reg.degrees_of_freedom(kernel=x @ x.T, reg=reg) == pytest.approx(
          want, rel=1e-9)
  with pytest.raises(ValueError, match="exactly one of"):
    diva_jax.loo.reg.degrees_of_freedom(reg=1.0)
  with pytest.raises(ValueError, match="reg"):
    diva_jax.loo.reg.degrees_of_freedom(features=tall, reg=0.0)


def test_auto_multiplier_follows_the_fit_flexibility():
  from diva_jax.curation.label_issues import auto_reg_multiplier
  assert auto_reg_multiplier(0.5, 1000) == 1.0 and auto_reg_multiplier(500, 1000) == 10.0
  assert auto_reg_multiplier(50, 1000) == pytest.approx(5.0)
  # A table with few columns (stiff fit: df / n ~ 0.01) is ranked at reg; embeddings with
  # d ~ n / 3 (df / n ~ 0.2) at 10 x reg.
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 2, 400)
  table = np.c_[rng.normal(size=(400, 4)) + 0.7 * labels[:, None], np.ones(400)]
  emb = np.c_[rng.normal(size=(400, 128)) + 0.3 * labels[:, None], np.ones(400)]
  r_table = diva_jax.find_label_issues(labels, features=table)
  r_emb = diva_jax.find_label_issues(labels, features=emb)
  assert r_table.detection_reg == pytest.approx(_auto_multiplier(table, r_table.reg) *
                                                r_table.reg, rel=1e-9)
  assert r_table.detection_reg / r_table.reg < 2.0
  assert r_emb.detection_reg / r_emb.reg == pytest.approx(10.0)


def test_matches_brute_force_refits_and_finite_differences():
  x, noisy, _ = _data()
  n, c = len(noisy), 3
  y = np.eye(c)[noisy]
  res = diva_jax.find_label_issues(noisy, features=x)
  # reg: the exact-LOO optimum of the library's own selection (checked against RidgeCV in
  # test_loo); the detection reg is clip(100 df / n, 1, 10) times it, df the trace of the
  # float64 hat matrix X (X^T X + reg I)^-1 X^T.
  assert res.reg == pytest.approx(float(diva_jax.select_reg(y, features=x, loss="ce",
                                                            temperature=0.3).reg))
  assert res.detection_reg == pytest.approx(_auto_multiplier(x, res.reg) * res.reg, rel=1e-9)
  # LOO probabilities: softmax of the brute-force refits' predictions at reg / 0.3.
  loo = _brute_loo(x, y, np.ones(n), res.reg)
  p = np.exp(loo / 0.3 - (loo / 0.3).max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(res.loo_probs, p, rtol=1e-6, atol=1e-9)
  np.testing.assert_array_equal(res.suggested_labels, loo.argmax(1))
  np.testing.assert_allclose(res.quality_scores, p[np.arange(n), noisy], rtol=1e-6)
  # The derivative: central finite differences of the brute-force LOO cross-entropy.
  h = 1e-5
  for i in (0, 3, 17, 40):
    e = np.zeros(n)
    e[i] = h
    fd = (_ce_loss(x, y, 1 + e, res.detection_reg, 0.3)
          - _ce_loss(x, y, 1 - e, res.detection_reg, 0.3)) / (2 * h)
    assert res.derivative[i] == pytest.approx(fd, rel=1e-5, abs=1e-9)
  assert res.loo_loss == pytest.approx(_ce_loss(x, y, np.ones(n), res.detection_reg, 0.3),
                                       rel=1e-9)
  # The automatic threshold: the estimated count of the most harmful with derivative > 0.
  assert res.num_issues == detect.estimate_num_issues(p, noisy)
  k = min(res.num_issues, int(np.sum(res.derivative > 0)))
  np.testing.assert_array_equal(np.flatnonzero(res.flagged),
                                np.sort(np.argsort(-res.derivative, kind="stable")[:k]))
  np.testing.assert_array_equal(res.ranking, np.argsort(-res.derivative, kind="stable"))
  assert res.num_positive == int(np.sum(res.derivative > 0))
  # And it finds the planted flips on this easy problem.
  assert res.flagged[:6].sum() >= 5
  # The paper's derivative (unweighted outer mean) is one argument away.
  paper = diva_jax.find_label_issues(noisy, features=x, outer="mean")
  for i in (0, 3, 17):
    e = np.zeros(n)
    e[i] = h
    fd = (_ce_loss(x, y, 1 + e, res.detection_reg, 0.3, "mean")
          - _ce_loss(x, y, 1 - e, res.detection_reg, 0.3, "mean")) / (2 * h)
    assert paper.derivative[i] == pytest.approx(fd, rel=1e-5, abs=1e-9)
  assert not np.allclose(paper.derivative, res.derivative)


def test_sign_rule_kernel_form_and_given_reg():
  x, noisy, _ = _data(seed=1)
  feats = diva_jax.find_label_issues(noisy, features=x, reg=0.7, threshold="sign",
                                     detection_reg_multiplier=10.0)
  assert feats.reg == 0.7 and feats.detection_reg == pytest.approx(7.0)
  auto = diva_jax.find_label_issues(noisy, features=x, reg=0.7)  # the rule at a given reg
  assert auto.detection_reg == pytest.approx(0.7 * _auto_multiplier(x, 0.7), rel=1e-9)
  np.testing.assert_array_equal(feats.flagged, feats.derivative > 0)
  # The dual form on the linear kernel is the same fit.
  kern = diva_jax.find_label_issues(noisy, kernel=x @ x.T, reg=0.7, threshold="sign",
                                    detection_reg_multiplier=10.0)
  np.testing.assert_allclose(kern.derivative, feats.derivative, rtol=1e-6, atol=1e-10)
  np.testing.assert_array_equal(kern.flagged, feats.flagged)


def test_distributed_over_fake_devices_equals_in_memory():
  x, noisy, _ = _data(n=45, seed=2)  # 45 rows: padded to a multiple of the device count
  a = diva_jax.find_label_issues(noisy, features=x.astype(np.float32))
  b = diva_jax.find_label_issues(noisy, features=x.astype(np.float32), distributed=True)
  np.testing.assert_allclose(b.derivative, a.derivative, rtol=2e-3, atol=1e-6)
  np.testing.assert_array_equal(b.flagged, a.flagged)


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=np.zeros(10), features=np.ones((10, 2))), "labels must be a \\[n\\] integer"),
    (dict(labels=np.arange(10) % 2, features=np.ones((9, 2))), "n = 10"),
    (dict(labels=np.arange(10) % 2), "exactly one of features"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)), kernel=np.eye(10)),
     "exactly one of features"),
    (dict(labels=np.arange(10) % 2, kernel=np.eye(9)), "kernel must have shape"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)), threshold="top"),
     "threshold must be one of"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)), reg=-1.0), "reg must be"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)), num_classes=1),
     "num_classes must be"),
    (dict(labels=np.arange(10) % 3, features=np.ones((10, 2)), num_classes=2),
     "in \\[0, num_classes\\)"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)) * np.nan), "finite"),
    (dict(labels=np.arange(10) % 2, features=np.ones((10, 2)), loss="hinge"), "loss"),
])
def test_bad_input_is_named_before_any_work(kwargs, match):
  labels = kwargs.pop("labels")
  with pytest.raises(ValueError, match=match):
    diva_jax.find_label_issues(labels, **kwargs)


def test_refit_test_error_matches_a_numpy_refit():
  x, noisy, clean = _data(n=60, seed=3)
  tx, _, ty = _data(n=30, seed=4)
  keep = np.ones(60, bool)
  keep[:6] = False
  err = diva_jax.refit_test_error(keep, noisy, features=x, test_features=tx, test_labels=ty, reg=0.5)
  w = _fit(x[keep], np.eye(3)[noisy[keep]], np.ones(keep.sum()), 0.5)
  assert err == pytest.approx(np.mean((tx @ w).argmax(1) != ty))
  # reg re-chosen on the kept samples when not given; NaN below two kept samples.
  chosen = float(diva_jax.select_reg(np.eye(3)[noisy[keep]], features=x[keep], loss="ce",
                                     temperature=0.3).reg)
  assert diva_jax.refit_test_error(keep, noisy, features=x, test_features=tx, test_labels=ty) == pytest.approx(
      diva_jax.refit_test_error(keep, noisy, features=x, test_features=tx, test_labels=ty, reg=chosen))
  assert np.isnan(diva_jax.refit_test_error(np.arange(60) == 0, noisy, features=x, test_features=tx, test_labels=ty))
  with pytest.raises(ValueError, match="test_features must have d = 12"):
    diva_jax.refit_test_error(keep, noisy, features=x, test_features=tx[:, :5], test_labels=ty)
