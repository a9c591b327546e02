"""Tests for diva_jax.linearization (linearize) and the trainable-parameter predicates."""
import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax import _tree_utils
from diva_jax.linearization import linearize


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(6)(x))
    x = nn.tanh(nn.Dense(6)(x))
    return nn.Dense(3, name="head")(x)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture(scope="module")
def setup():
  model = MLP()
  x = jax.random.normal(jax.random.key(0), (5, 4))
  params = _f64(model.init(jax.random.key(1), x))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  delta = treedef.unflatten(
      [0.1 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
  return model, x, params, delta


def _add(a, b):
  return jax.tree_util.tree_map(jnp.add, a, b)


def test_exact_at_params_and_equals_jvp(setup):
  model, x, params, delta = setup
  f_lin = jax.jit(linearize(model.apply, params))
  np.testing.assert_allclose(f_lin(params, x), model.apply(params, x),
                             rtol=1e-13, atol=1e-13)
  y0, dy = jax.jvp(lambda p: model.apply(p, x), (params,), (delta,))
  np.testing.assert_allclose(f_lin(_add(params, delta), x), y0 + dy,
                             rtol=1e-12, atol=1e-12)
  # Linear in the parameters, unlike the network.
  two = _add(params, _add(delta, delta))
  np.testing.assert_allclose(f_lin(two, x) - y0, 2 * dy, rtol=1e-11,
                             atol=1e-12)
  assert not np.allclose(model.apply(two, x) - y0, 2 * dy, atol=1e-6)


def test_gradient_equals_network_gradient_at_params(setup):
  model, x, params, _ = setup
  f_lin = linearize(model.apply, params)
  loss = lambda f: (lambda p: jnp.sum(jnp.sin(f(p, x))))
  g_lin = jax.jit(jax.grad(loss(f_lin)))(params)
  g = jax.grad(loss(model.apply))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g_lin), jax.tree_util.tree_leaves(g)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_trainable_subset_freezes_the_rest(setup):
  model, x, params, delta = setup
  pred = _tree_utils.path_matches("head")
  f_lin = linearize(model.apply, params, trainable=pred)
  mask = [pred(p) for p in _tree_utils.parameter_paths(params)]
  assert mask.count(True) == 2  # head kernel and bias
  leaves, treedef = jax.tree_util.tree_flatten(delta)
  head_only = treedef.unflatten(
      [l if m else jnp.zeros_like(l) for l, m in zip(leaves, mask)])
  y0, dy = jax.jvp(lambda p: model.apply(p, x), (params,), (head_only,))
  # Whatever is passed for the frozen leaves is ignored.
  np.testing.assert_allclose(f_lin(_add(params, delta), x), y0 + dy,
                             rtol=1e-12, atol=1e-12)
  g = jax.grad(lambda p: jnp.sum(f_lin(p, x)))(params)
  for path, leaf in zip(_tree_utils.parameter_paths(g),
                        jax.tree_util.tree_leaves(g)):
    assert bool(jnp.any(leaf != 0)) == pred(path), path


def test_path_helpers(setup):
  _, _, params, _ = setup
  paths = _tree_utils.parameter_paths(params)
  assert "params/head/kernel" in paths and "params/Dense_0/bias" in paths
  assert _tree_utils.path_excludes("head", "Dense_0")("params/Dense_1/kernel")
  assert not _tree_utils.path_excludes("head")("params/head/bias")
  assert _tree_utils.path_matches(r"Dense_\d/kernel")("params/Dense_1/kernel")


def test_nnx_model_and_plain_function_with_kwargs():
  model = nnx.Sequential(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), jnp.tanh,
                         nnx.Linear(5, 2, rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(model)
  state = _f64(state)
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
  x = jnp.linspace(-1, 1, 12).reshape(3, 4)
  assert "layers/2/kernel" in _tree_utils.parameter_paths(state)
  f_lin = linearize(apply_fn, state, trainable=_tree_utils.path_matches("layers/2"))
  np.testing.assert_allclose(f_lin(state, x), apply_fn(state, x), rtol=1e-13)
  delta = jax.tree_util.tree_map(jnp.ones_like, state)
  moved = f_lin(_add(state, delta), x)
  # Only the last layer moves: output shifts by h @ 1 + 1 exactly.
  h = jnp.tanh(nnx.merge(graphdef, state).layers[0](x))
  np.testing.assert_allclose(moved - apply_fn(state, x),
                             (h.sum(-1) + 1)[:, None] * jnp.ones((1, 2)),
                             rtol=1e-12)

  def plain(p, x, *, scale):
    return scale * jnp.tanh(x @ p["w"]) + p["b"]
  p = {"w": jnp.eye(4)[:, :2] * 0.5, "b": jnp.zeros(2)}
  f_lin = linearize(plain, p)
  dp = {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}
  y0, dy = jax.jvp(lambda q: plain(q, x, scale=2.0), (p,), (dp,))
  np.testing.assert_allclose(f_lin(_add(p, dp), x, scale=2.0), y0 + dy,
                             rtol=1e-13)


def test_bad_input(setup):
  model, x, params, _ = setup
  with pytest.raises(ValueError, match="selected none"):
    linearize(model.apply, params, trainable=_tree_utils.path_matches("nope"))
  f_lin = linearize(model.apply, params)
  wrong = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape + (1,)), params)
  with pytest.raises(ValueError, match="expected shape"):
    f_lin(wrong, x)
  with pytest.raises(ValueError, match="structure"):
    f_lin({"params": {}}, x)
