"""Sharded kernels, features and Gram products on 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax.ntk import api as ntk
from diva_jax.parallel import sharding


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(8)(x))
    return nn.Dense(3)(x)


def _assert_row_sharded(arr, n_devices=8):
  """The array is split by rows over the mesh: never silently replicated."""
  assert arr.sharding.spec[0] == "data", arr.sharding
  shards = arr.addressable_shards
  assert len(shards) == n_devices
  assert {s.data.shape[0] for s in shards} == {arr.shape[0] // n_devices}
  assert len({s.device for s in shards}) == n_devices


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  return sharding.data_mesh()


def test_mesh_and_shard_rows(mesh):
  assert mesh.axis_names == ("data",) and mesh.devices.size == 8
  x = np.arange(16 * 3, dtype=np.float64).reshape(16, 3)
  xs = sharding.shard_rows(x, mesh)
  _assert_row_sharded(xs)
  np.testing.assert_array_equal(xs, x)
  with pytest.raises(ValueError, match="divisible by the 8 devices"):
    sharding.shard_rows(x[:13], mesh)
  small = sharding.data_mesh(jax.devices()[:2], axis="rows")
  assert small.axis_names == ("rows",) and small.devices.size == 2


def test_sharded_gram_equals_single_device(mesh):
  rng = np.random.default_rng(0)
  n, d, c = 24, 6, 3
  z, a, y = rng.normal(size=(n, d)), rng.uniform(0, 2, n), rng.normal(size=(n, c))
  g_ref, b_ref = z.T @ (a[:, None] * z), z.T @ (a[:, None] * y)
  g1, b1 = sharding.sharded_gram(a, y, features=z)              # mesh=None
  np.testing.assert_allclose(g1, g_ref, rtol=1e-12)
  np.testing.assert_allclose(b1, b_ref, rtol=1e-12)
  zs, as_, ys = (sharding.shard_rows(v, mesh) for v in (z, a, y))
  g, b = jax.jit(sharding.sharded_gram, static_argnames=("mesh", "axis"))(
      as_, ys, features=zs, mesh=mesh)
  np.testing.assert_allclose(g, g_ref, rtol=1e-12)
  np.testing.assert_allclose(b, b_ref, rtol=1e-12)
  assert g.sharding.is_fully_replicated and g.shape == (d, d)
  # Uneven rows are padded with zero weights; vector targets give [d].
  g, b = sharding.sharded_gram(a[:13], y[:13, 0], features=z[:13], mesh=mesh)
  np.testing.assert_allclose(g, z[:13].T @ (a[:13, None] * z[:13]), rtol=1e-12)
  np.testing.assert_allclose(b, z[:13].T @ (a[:13] * y[:13, 0]), rtol=1e-12)
  with pytest.raises(ValueError, match="weights: expected shape"):
    sharding.sharded_gram(a[:5], y, features=z, mesh=mesh)
  with pytest.raises(ValueError, match="targets"):
    sharding.sharded_gram(a, y[:5], features=z, mesh=mesh)


def test_sharded_kernel_and_features_equal_single_device(mesh):
  model = MLP()
  x = jax.random.normal(jax.random.key(0), (16, 4))
  params = jax.tree_util.tree_map(
      lambda v: v.astype(jnp.float64), jax.jit(model.init)(jax.random.key(1), x))
  xs = sharding.shard_rows(x, mesh)
  _assert_row_sharded(xs)
  kernel_fn = ntk.empirical_ntk_fn(model.apply)
  exact_fn = ntk.jacobian_features(model.apply)
  proj_fn = ntk.projected_jacobian_features(model.apply, 32, seed=3)
  sk = sharding.shard_kernel_fn(kernel_fn, mesh)
  se = sharding.shard_features_fn(exact_fn, mesh)
  sp = sharding.shard_features_fn(proj_fn, mesh)

  @jax.jit
  def single(x, p):
    return kernel_fn(x, None, p), exact_fn(x, p), proj_fn(x, p)

  @jax.jit
  def sharded(xs, p):
    return sk(xs, None, p), se(xs, p), sp(xs, p)

  k_ref, z_ref, zp_ref = single(x, params)
  k, z, zp = sharded(xs, params)
  for got, ref in ((k, k_ref), (z, z_ref), (zp, zp_ref)):
    _assert_row_sharded(got)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12)
  # Primal form end to end: Gram of the sharded features.
  a = jnp.linspace(0.5, 1.5, 16)
  y = jnp.ones((16, 3))
  g, b = sharding.sharded_gram(sharding.shard_rows(a, mesh),
                               sharding.shard_rows(y, mesh), features=zp,
                               mesh=mesh)
  np.testing.assert_allclose(g, zp_ref.T @ (a[:, None] * zp_ref), rtol=1e-11)
  np.testing.assert_allclose(b, zp_ref.T @ (a[:, None] * y), rtol=1e-11)
  with pytest.raises(ValueError, match="divisible"):
    sk(x[:12], None, params)
