"""The weighted outer mean of the LOO loss (`outer="weighted"`) against float64 oracles.

L_w(a) = sum_i a_i m_i l_i(a) / sum_i a_i m_i, with l_i the loss of the refit that leaves i
out. The oracle is written without the library: n numpy refits per evaluation, and its
gradient by central differences over those refits. Every entry point (in memory on both
backends and all three forms, streamed on both backends, sharded over the fake devices) must
give the same value and derivative.
"""

import jax
import numpy as np
import pytest

import diva_jax
from diva_jax.parallel import multihost


def _softmax_ce(f, y, t):
  z = f / t
  z = z - z.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -(y * logp).sum(1)


def _brute_weighted_loss(z, y, a, reg, mask, loss, t, outer):
  """The weighted (or plain) outer mean of the per-sample LOO losses, by n refits."""
  n, d = z.shape
  f = np.empty_like(y)
  for i in range(n):
    b = a.copy()
    b[i] = 0.0
    w = np.linalg.solve(z.T @ (b[:, None] * z) + reg * np.eye(d), z.T @ (b[:, None] * y))
    f[i] = z[i] @ w
  per = ((f - y) ** 2).sum(1) if loss == "mse" else _softmax_ce(f, y, t)
  m = mask * a if outer == "weighted" else mask
  return float((m * per).sum() / m.sum())


def _brute_grad(z, y, a, reg, mask, loss, t, outer, h=1e-6):
  g = np.empty(len(a))
  for k in range(len(a)):
    up, dn = a.copy(), a.copy()
    up[k] += h
    dn[k] -= h
    g[k] = (_brute_weighted_loss(z, y, up, reg, mask, loss, t, outer)
            - _brute_weighted_loss(z, y, dn, reg, mask, loss, t, outer)) / (2 * h)
  return g


def _problem(n=16, d=4, c=3, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, d))
  y = np.eye(c)[rng.integers(0, c, n)]
  a = rng.uniform(0.3, 1.7, n)
  a[3] = 0.0  # a zero weight: its own term is 0 in the value but not in the derivative
  mask = np.ones(n)
  mask[[5, 9]] = 0.0
  return z, y, a, mask


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("form", ["features", "kernel", "wide_features"])
@pytest.mark.parametrize("backend", ["host", "xla"])
def test_weighted_outer_equals_brute_force_value_and_central_differences(loss, form, backend):
  z, y, a, mask = _problem(d=24 if form == "wide_features" else 4)
  reg, t = 0.7, 0.5
  src = {"kernel": z @ z.T} if form == "kernel" else {"features": z}
  value, deriv = diva_jax.loo_loss_and_derivative(
      a, y, reg=reg, loss=loss, temperature=t, eval_mask=mask, outer="weighted",
      backend=backend, **src)
  want = _brute_weighted_loss(z, y, a, reg, mask, loss, t, "weighted")
  np.testing.assert_allclose(float(value), want, rtol=1e-9)
  np.testing.assert_allclose(np.asarray(deriv), _brute_grad(z, y, a, reg, mask, loss, t,
                                                            "weighted"), atol=1e-6)
  # The same under jax.grad (the custom VJP), and from the reference closed form by autodiff.
  g = jax.grad(lambda w: diva_jax.loo_loss(w, y, reg=reg, loss=loss, temperature=t,
                                           eval_mask=mask, outer="weighted", backend=backend,
                                           **src))(a)
  np.testing.assert_allclose(np.asarray(g), np.asarray(deriv), atol=1e-9)
  g_ref = jax.grad(lambda w: diva_jax.reference_loo_loss(
      w, y, reg=reg, loss=loss, temperature=t, eval_mask=mask, outer="weighted", **src))(a)
  np.testing.assert_allclose(np.asarray(g_ref), np.asarray(deriv), atol=1e-9)


def test_weighted_derivative_is_the_plain_one_plus_the_own_sample_term_at_one():
  z, y, _, _ = _problem(n=20, seed=1)
  a = np.ones(20)
  plain = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=0.5, loss="ce",
                                           temperature=0.3)
  weighted = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=0.5, loss="ce",
                                              temperature=0.3, outer="weighted")
  np.testing.assert_allclose(float(weighted.value), float(plain.value), rtol=1e-12)
  f = np.asarray(diva_jax.loo_predictions(a, y, features=z, reg=0.5))
  per = _softmax_ce(f, y, 0.3)
  own = (per - per.mean()) / 20
  np.testing.assert_allclose(np.asarray(weighted.derivative),
                             np.asarray(plain.derivative) + own, atol=1e-12)
  assert np.max(np.abs(own)) > 1e-3  # the term is not negligible here


@pytest.mark.parametrize("backend", ["host", "xla"])
def test_streamed_weighted_outer_equals_in_memory(backend):
  z, y, a, mask = _problem(n=37, d=5, seed=2)
  ref = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=0.4, loss="ce",
                                         temperature=0.3, eval_mask=mask, outer="weighted")
  got = diva_jax.streamed_loo_loss_and_derivative(
      a, y, features=z, reg=0.4, loss="ce", temperature=0.3, eval_mask=mask,
      outer="weighted", block_size=10, backend=backend)
  np.testing.assert_allclose(float(got.value), float(ref.value), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(got.derivative), np.asarray(ref.derivative),
                             atol=1e-10)


def test_sharded_weighted_outer_equals_in_memory():
  assert len(jax.devices()) > 1  # conftest's fake devices: the sharded path runs
  z, y, a, _ = _problem(n=29, d=5, seed=3)
  ref = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=0.4, loss="ce",
                                         temperature=0.3, outer="weighted")
  got = multihost.sharded_loo_loss_and_derivative(a, y, features=z, reg=0.4, loss="ce",
                                                  temperature=0.3, outer="weighted")
  np.testing.assert_allclose(float(got.value), float(ref.value), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(got.derivative), np.asarray(ref.derivative),
                             atol=1e-10)


@pytest.mark.parametrize("rel", [1e-3, 1e-1, 10.0])
def test_weighted_outer_float32_close_to_float64_over_select_regs_range(rel):
  rng = np.random.default_rng(4)
  n, d = 300, 24
  z = rng.normal(size=(n, d))
  y = np.eye(5)[rng.integers(0, 5, n)]
  a = np.ones(n)
  reg = rel * float(np.trace(z.T @ z)) / d
  v64, g64 = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=reg, loss="ce",
                                              temperature=0.3, outer="weighted")
  v32, g32 = diva_jax.loo_loss_and_derivative(
      a.astype(np.float32), y.astype(np.float32), features=z.astype(np.float32), reg=reg,
      loss="ce", temperature=0.3, outer="weighted")
  assert g32.dtype == np.float32
  np.testing.assert_allclose(float(v32), float(v64), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(g32), np.asarray(g64),
                             atol=1e-3 * float(np.max(np.abs(g64))))


def test_bad_outer_and_all_zero_weights_are_refused():
  z, y, a, mask = _problem()
  with pytest.raises(ValueError, match=r"outer must be one of \('mean', 'weighted'\), got "
                                       r"'sum'"):
    diva_jax.loo_loss(a, y, features=z, reg=1.0, outer="sum")
  with pytest.raises(ValueError, match="outer='weighted' needs"):
    diva_jax.loo_loss_and_derivative(np.zeros(16), y, features=z, reg=1.0, outer="weighted")
  with pytest.raises(ValueError, match="outer must be one of"):
    diva_jax.streamed_loo_loss_and_derivative(a, y, features=z, reg=1.0, outer="Weighted")
  # The plain mean allows all-zero weights (every prediction is then 0).
  diva_jax.loo_loss(np.zeros(16), y, features=z, reg=1.0)


def test_reweight_steps_along_the_weighted_derivative():
  z, y, _, _ = _problem(n=30, seed=5)
  a = np.ones(30)
  res = diva_jax.reweight(a, y, features=z, reg=0.5, loss="ce", temperature=0.3,
                          outer="weighted", steps=1, learning_rate=0.1)
  _, g = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=0.5, loss="ce",
                                          temperature=0.3, outer="weighted")
  g = np.asarray(g)
  # The default step: the largest weight change is the learning rate, along -g.
  np.testing.assert_allclose(np.asarray(res.weights), np.maximum(0, a - 0.1 * g / np.abs(g).max()),
                             atol=1e-9)
  with pytest.raises(ValueError, match="outer must be one of"):
    diva_jax.reweight(a, y, features=z, reg=0.5, outer="both")
