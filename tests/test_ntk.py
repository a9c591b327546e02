"""Tests for diva_jax.ntk.api against explicit float64 jacrev oracles."""
import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax import _tree_utils
from diva_jax.ntk import api as ntk

C = 3


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(8)(x))
    x = nn.tanh(nn.Dense(8)(x))
    return nn.Dense(C, name="head")(x)


class CNN(nn.Module):
  """Two conv layers, a LayerNorm and a Dense head (generic + structured)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
    return nn.Dense(C, name="head")(x)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _jac_rows(apply_fn, params, x, pred=None):
  """Oracle: explicit flattened Jacobian [n, *out, P] over selected leaves."""
  jac = jax.jit(jax.jacrev(apply_fn))(params, x)
  paths = _tree_utils.parameter_paths(params)
  out_ndim = apply_fn(params, x).ndim
  leaves = [j.reshape(j.shape[:out_ndim] + (-1,))
            for path, j in zip(paths, jax.tree_util.tree_leaves(jac))
            if pred is None or pred(path)]
  return jnp.concatenate(leaves, axis=-1)


def _oracle_full(apply_fn, params, x1, x2, pred=None):
  j1, j2 = _jac_rows(apply_fn, params, x1, pred), _jac_rows(apply_fn, params, x2, pred)
  return jnp.einsum("ikp,jlp->ijkl", j1, j2)


MODELS = {
    "mlp": (MLP(), (5,)),
    "cnn": (CNN(), (6, 6, 2)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def problem(request):
  model, shape = MODELS[request.param]
  x1 = jax.random.normal(jax.random.key(1), (7,) + shape)
  x2 = jax.random.normal(jax.random.key(2), (4,) + shape)
  params = _f64(jax.jit(model.init)(jax.random.key(0), x1))
  j1, j2 = (_jac_rows(model.apply, params, x) for x in (x1, x2))
  oracles = {"x1x2": jnp.einsum("ikp,jlp->ijkl", j1, j2),
             "x1x1": jnp.einsum("ikp,jlp->ijkl", j1, j1)}
  return request.param, model, params, x1, x2, oracles


@pytest.mark.parametrize("implementation", ntk.IMPLEMENTATIONS)
def test_matches_jacrev_oracle_traced_and_full(problem, implementation):
  _, model, params, x1, x2, oracles = problem
  full = oracles["x1x2"]
  traced_fn = ntk.empirical_ntk_fn(model.apply, implementation=implementation)
  full_fn = ntk.empirical_ntk_fn(model.apply, implementation=implementation,
                                 trace_axes=())
  traced, kfull = jax.jit(lambda a, b, p: (traced_fn(a, b, p), full_fn(a, b, p)))(
      x1, x2, params)
  assert traced.shape == (7, 4) and kfull.shape == (7, 4, C, C)
  # neural-tangents' trace is the MEAN over the traced logits.
  np.testing.assert_allclose(traced, jnp.einsum("ijkk->ij", full) / C,
                             rtol=1e-11, atol=1e-11)
  np.testing.assert_allclose(kfull, full, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("implementation", ["structured", "jacobian_contraction"])
def test_blocked_with_progress_equals_oracle(problem, implementation):
  _, model, params, x1, _, oracles = problem
  calls = []
  kernel_fn = ntk.empirical_ntk_fn(
      model.apply, implementation=implementation, block_size=3,
      progress=lambda done, total: calls.append((int(done), int(total))))
  k = jax.jit(kernel_fn, static_argnums=1)(x1, None, params)  # x2=None: x1
  full = oracles["x1x1"]
  np.testing.assert_allclose(k, jnp.einsum("ijkk->ij", full) / C,
                             rtol=1e-11, atol=1e-11)
  np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=1e-12)
  # 7 rows in blocks of 3: 3 x 3 blocks, each reported once.
  assert sorted(calls) == [(i, 9) for i in range(1, 10)]


def test_trainable_subset_vmap_axes_none_and_ntk_vp_blocks():
  model, shape = MODELS["mlp"]
  x1 = jax.random.normal(jax.random.key(3), (5,) + shape)
  params = _f64(jax.jit(model.init)(jax.random.key(0), x1))
  pred = _tree_utils.path_excludes("Dense_0")
  oracle = jnp.einsum("ijkk->ij", _oracle_full(model.apply, params, x1, x1, pred)) / C
  fns = [ntk.empirical_ntk_fn(model.apply, implementation=impl, trainable=pred,
                              vmap_axes=None, block_size=2)
         for impl in ntk.IMPLEMENTATIONS]
  fns.append(ntk.empirical_ntk_fn(model.apply, trainable=pred))
  ks = jax.jit(lambda x, p: [f(x, None, p) for f in fns])(x1, params)
  for k in ks:
    np.testing.assert_allclose(k, oracle, rtol=1e-11, atol=1e-11)
  all_params = jnp.einsum("ijkk->ij", _oracle_full(model.apply, params, x1, x1)) / C
  assert not np.allclose(k, all_params, rtol=1e-3)
  # A Dense with a frozen kernel but a trainable bias (structured path).
  pred2 = _tree_utils.path_excludes("head/kernel", "Dense_1/bias")
  oracle2 = jnp.einsum("ijkk->ij", _oracle_full(model.apply, params, x1, x1, pred2)) / C
  k2 = jax.jit(ntk.empirical_ntk_fn(model.apply, trainable=pred2))(x1, x1, params)
  np.testing.assert_allclose(k2, oracle2, rtol=1e-11, atol=1e-11)


def test_nnx_model_and_output_axes():
  model = nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), jnp.tanh,
                         nnx.Linear(6, 6, rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(model)
  state = _f64(state)
  # Outputs [n, 2, 3]: trace over the last axis, keep axis 1 -> [n1, n2, 2, 2].
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x).reshape(x.shape[0], 2, 3)
  x1 = jax.random.normal(jax.random.key(4), (3, 4))
  x2 = jax.random.normal(jax.random.key(5), (2, 4))
  j1, j2 = _jac_rows(apply_fn, state, x1), _jac_rows(apply_fn, state, x2)
  oracle = jnp.einsum("iatp,jbtp->ijab", j1, j2) / 3
  fns = [ntk.empirical_ntk_fn(apply_fn, implementation=impl)
         for impl in ntk.IMPLEMENTATIONS]
  full_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=())
  *ks, kf = jax.jit(lambda a, b, s: [f(a, b, s) for f in fns + [full_fn]])(
      x1, x2, state)
  for k in ks:
    assert k.shape == (3, 2, 2, 2)
    np.testing.assert_allclose(k, oracle, rtol=1e-11, atol=1e-12)
  # Full kernel is interleaved like neural-tangents: [n1, n2, 2, 2, 3, 3].
  np.testing.assert_allclose(kf, jnp.einsum("iasp,jbtp->ijabst", j1, j2),
                             rtol=1e-11, atol=1e-12)


def test_exact_jacobian_features(problem):
  _, model, params, x1, _, oracles = problem
  full = oracles["x1x1"]
  traced_fn = ntk.jacobian_features(model.apply, block_size=4)
  full_fn = ntk.jacobian_features(model.apply, trace_axes=())
  z, zf = jax.jit(lambda x, p: (traced_fn(x, p), full_fn(x, p)))(x1, params)
  n_params = sum(l.size for l in jax.tree_util.tree_leaves(params))
  assert z.shape == (7, C * n_params)
  np.testing.assert_allclose(z @ z.T, jnp.einsum("ijkk->ij", full) / C,
                             rtol=1e-11, atol=1e-11)
  assert zf.shape == (7, C, n_params)
  np.testing.assert_allclose(jnp.einsum("ikp,jlp->ijkl", zf, zf), full,
                             rtol=1e-11, atol=1e-11)


def _mlp_small():
  model, shape = MODELS["mlp"]
  x = jax.random.normal(jax.random.key(6), (6,) + shape)
  params = _f64(jax.jit(model.init)(jax.random.key(0), x))
  return model, x, params


def test_projected_features_converge_to_kernel():
  """Statistical test with a fixed seed.

  Bound (documented in projected_jacobian_features): E||Z Z^T - K||_F^2 <=
  3 (sum_i lam_i)^2 / d, lam_i the top eigenvalue of J(x_i) J(x_i)^T / C.
  Directions are i.i.d. per column, so the 4096 columns of one draw hold 256
  independent d=16 estimates and 16 independent d=256 ones: their mean squared
  error must respect the bound (with a factor 2 for the sampling of the mean),
  shrink like 1/d, and averaging them (the d=4096 estimate) must be unbiased:
  its error within 3 sigma (Markov, probability >= 8/9) of the bound.
  """
  model, x, params = _mlp_small()
  j = _jac_rows(model.apply, params, x)                         # [n, C, P]
  k = jnp.einsum("ikp,jkp->ij", j, j) / C
  lam = float(jnp.linalg.eigvalsh(jnp.einsum("ikp,ilp->ikl", j, j) / C)[:, -1].sum())
  big = 4096
  z = jax.jit(ntk.projected_jacobian_features(model.apply, big, seed=0,
                                              chunk_size=512))(x, params)
  assert z.shape == (6, big)
  mse = {}
  for d in (16, 256):
    blocks = z.reshape(6, big // d, d).transpose(1, 0, 2) * np.sqrt(big / d)
    errs = jnp.linalg.norm(blocks @ blocks.transpose(0, 2, 1) - k, axis=(1, 2))
    mse[d] = float(jnp.mean(errs ** 2))
    assert mse[d] <= 2 * 3 * lam ** 2 / d, (d, mse, lam)
  assert mse[16] > 4 * mse[256], mse        # expected ratio 16
  err = float(jnp.linalg.norm(z @ z.T - k))
  assert err <= 3 * np.sqrt(3 / big) * lam, (err, lam)
  assert err ** 2 < mse[256] / 2


def test_projected_features_reproducible_and_full_form():
  model, x, params = _mlp_small()
  pf = ntk.projected_jacobian_features
  fn = pf(model.apply, 40, seed=7, chunk_size=16)
  blocked = pf(model.apply, 40, seed=7, chunk_size=7, block_size=4)
  narrow = pf(model.apply, 8, seed=7)
  other = pf(model.apply, 40, seed=8)
  full = pf(model.apply, 2000, seed=1, trace_axes=(), chunk_size=500)

  @jax.jit
  def run(x, params):
    return (fn(x, params), blocked(x, params), fn(x[3:5], params),
            narrow(x, params), other(x, params), full(x[:2], params))

  z, z_blocked, z_rows, z_narrow, z_other, zf = run(x, params)
  # Independent of blocking, chunking, which rows are asked for; a narrower
  # width is a prefix of the columns (rescaled); another seed differs.
  np.testing.assert_allclose(z_blocked, z, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(z_rows, z[3:5], rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(z_narrow, z[:, :8] * np.sqrt(40 / 8), rtol=1e-12,
                             atol=1e-14)
  assert not np.allclose(z_other, z)
  assert zf.shape == (2, C, 2000)
  j = _jac_rows(model.apply, params, x[:2])
  kfull = jnp.einsum("ikp,jlp->ijkl", j, j)
  np.testing.assert_allclose(jnp.einsum("ikd,jld->ijkl", zf, zf), kfull,
                             atol=0.15 * float(jnp.abs(kfull).max()))


def test_bad_input():
  model, x, params = _mlp_small()
  kernel_fn = ntk.empirical_ntk_fn(model.apply)
  with pytest.raises(ValueError, match="same per-sample shape"):
    kernel_fn(x, jnp.ones((2, 6)), params)
  with pytest.raises(ValueError, match="fit the network"):
    kernel_fn(jnp.ones((2, 7)), None, params)
  wrong = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape[:-1] + (2,)), params)
  with pytest.raises(ValueError, match="fit the network"):
    kernel_fn(x, None, wrong)
  with pytest.raises(ValueError, match="selected none"):
    ntk.empirical_ntk_fn(model.apply, trainable=_tree_utils.path_matches("xyz"))(
        x, None, params)
  with pytest.raises(ValueError, match="width"):
    ntk.projected_jacobian_features(model.apply, 0)
  with pytest.raises(ValueError, match="implementation"):
    ntk.empirical_ntk_fn(model.apply, implementation="magic")
  with pytest.raises(ValueError, match="block_size"):
    ntk.empirical_ntk_fn(model.apply, block_size=0)
  with pytest.raises(ValueError, match="batch axis"):
    ntk.empirical_ntk_fn(model.apply, trace_axes=(0,))(x, None, params)
  bad = lambda p, x: model.apply(p, x) / 0.0
  with pytest.raises(ValueError, match="non-finite"):  # checked when eager
    ntk.empirical_ntk_fn(bad, implementation="ntk_vector_products")(
        x[:2], None, params)
