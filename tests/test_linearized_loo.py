"""Linearization feeds the LOO core: feature form (exact Jacobians) and kernel form (NTK)
give the same LOO predictions and dataset derivative; the residual targets of a full
linearization; projected features approach the exact result as the width grows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import diva_jax


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(8)(x))
    x = nn.tanh(nn.Dense(5)(x))
    return nn.Dense(3, name="head")(x)


def _setup(n=24):
  model = MLP()
  x = jax.random.normal(jax.random.key(0), (n, 4), jnp.float64)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(1), x))
  labels = np.arange(n) % 3
  labels[:3] = (labels[:3] + 1) % 3  # three flipped labels
  y = np.eye(3)[labels]
  return model, x, params, y


def test_feature_and_kernel_forms_agree_on_linearized_network():
  n = 64
  model, x, params, y = _setup(n)
  # Full linearisation: the regression target is the residual Y - f(w0, X).
  resid = y - np.asarray(model.apply(params, x))
  a = np.linspace(0.0, 1.5, n)
  # Features are the per-output Jacobians side by side: 3 x 18 = 54 < n for the head (the
  # primal form), 3 x 103 = 309 > n for every parameter (the dual form, through Z Z^T).
  for trainable, width in ((diva_jax.path_matches("head"), 54), (None, 309)):
    feats = jax.jit(diva_jax.jacobian_features(model.apply, trainable=trainable))(x, params)
    assert feats.shape == (n, width)
    kern = jax.jit(diva_jax.empirical_ntk_fn(model.apply, trainable=trainable,
                                             implementation="jacobian_contraction"))(
                                                 x, None, params)
    np.testing.assert_allclose(feats @ feats.T, kern, rtol=1e-10, atol=1e-12)
    kern = 0.5 * (kern + kern.T)
    reg = 0.05 * float(jnp.trace(kern)) / n
    pf = diva_jax.loo_predictions(a, resid, features=feats, reg=reg)
    pk = diva_jax.loo_predictions(a, resid, kernel=kern, reg=reg)
    np.testing.assert_allclose(pf, pk, rtol=1e-7, atol=1e-9)
    gf = diva_jax.dataset_derivative(a, resid, features=feats, reg=reg)
    gk = diva_jax.dataset_derivative(a, resid, kernel=kern, reg=reg)
    np.testing.assert_allclose(gf, gk, rtol=1e-6, atol=1e-9 * float(np.max(np.abs(gk))))


def test_head_only_linearization_equals_ridge_on_penultimate_features():
  """Linearising only the last Dense layer is the paper's last-layer DIVA: the Jacobian
  features are the penultimate activations (and a 1 for the bias), per output."""
  model, x, params, y = _setup()
  feats = jax.jit(diva_jax.jacobian_features(model.apply,
                                             trainable=diva_jax.path_matches("head")))(x, params)
  # Penultimate activations by hand.
  p = params["params"]
  h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  h = jnp.tanh(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
  phi = np.concatenate([np.asarray(h), np.ones((24, 1))], 1)  # [n, 6]
  # Traced kernel = mean over the 3 outputs of phi phi^T (each output has its own copy).
  np.testing.assert_allclose(feats @ feats.T, phi @ phi.T, rtol=1e-10, atol=1e-12)
  reg = 0.3
  np.testing.assert_allclose(diva_jax.loo_predictions(np.ones(24), y, features=feats, reg=reg),
                             diva_jax.loo_predictions(np.ones(24), y, features=phi, reg=reg),
                             rtol=1e-8, atol=1e-10)


def test_projected_features_converge_to_exact_dataset_derivative():
  model, x, params, y = _setup()
  kern = jax.jit(diva_jax.empirical_ntk_fn(model.apply))(x, None, params)
  kern = 0.5 * (kern + kern.T)
  reg = 0.2 * float(jnp.trace(kern)) / 24
  exact = np.asarray(diva_jax.dataset_derivative(np.ones(24), y, kernel=kern, reg=reg))
  errs = []
  for width in (64, 1024):
    z = jax.jit(diva_jax.projected_jacobian_features(model.apply, width, seed=0))(x, params)
    g = np.asarray(diva_jax.dataset_derivative(np.ones(24), y, features=z, reg=reg))
    errs.append(np.linalg.norm(g - exact) / np.linalg.norm(exact))
  assert errs[1] < errs[0] and errs[1] < 0.15, errs
