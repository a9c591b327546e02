"""The LOO core against independent float64 oracles: brute-force refits, scikit-learn's
RidgeCV, jax.grad of the reference closed form, finite differences and check_grads."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from sklearn.linear_model import RidgeCV

import diva_jax
from diva_jax.loo.backends import xla as _xla
from diva_jax.loo import closed_form as cf
from diva_jax.loo import api as loo
from diva_jax.loo import reg as reg_selection


def _problem(n=24, d=6, c=3, seed=0, zeros=(1, 7)):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, d))
  y = rng.normal(size=(n, c))
  a = rng.uniform(0.2, 2.0, size=n)
  a[list(zeros)] = 0.0
  return z, y, a


def _brute_force_loo(z, y, a, reg):
  """n refits, each with sample i's weight set to 0, by numpy."""
  n, d = z.shape
  out = np.empty_like(y)
  for i in range(n):
    b = a.copy()
    b[i] = 0.0
    w = np.linalg.solve(z.T @ (b[:, None] * z) + reg * np.eye(d), z.T @ (b[:, None] * y))
    out[i] = z[i] @ w
  return out


@pytest.mark.parametrize("c", [1, 4])
@pytest.mark.parametrize("form", ["features", "kernel", "wide_features"])
def test_loo_predictions_equal_brute_force_refits(c, form):
  d = 40 if form == "wide_features" else 6  # d > n picks the dual form internally.
  z, y, a = _problem(n=24, d=d, c=c)
  reg = 0.37
  kw = {"kernel": z @ z.T} if form == "kernel" else {"features": z}
  got = diva_jax.loo_predictions(a, y, reg=reg, **kw)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, _brute_force_loo(z, y, a, reg), rtol=1e-9, atol=1e-10)
  # At weight 0 the LOO prediction is the fitted value.
  w = np.linalg.solve(z.T @ (a[:, None] * z) + reg * np.eye(d), z.T @ (a[:, None] * y))
  np.testing.assert_allclose(got[1], z[1] @ w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("use_kernel", [False, True])
def test_loo_predictions_equal_sklearn_ridgecv(use_kernel):
  z, y, a = _problem(n=40, d=7, c=3, zeros=())
  reg = 2.5
  ridge = RidgeCV(alphas=[reg], fit_intercept=False, store_cv_results=True,
                  scoring="neg_mean_squared_error").fit(z, y, sample_weight=a)
  expected = ridge.cv_results_[:, :, 0]
  if use_kernel:
    got = diva_jax.loo_predictions(a, y, kernel=z @ z.T, reg=reg)
  else:
    got = diva_jax.loo_predictions(a, y, features=z, reg=reg)
  np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_primal_and_dual_agree_on_loss_and_derivative():
  z, y, a = _problem(n=30, d=5, c=2)
  for loss in diva_jax.LOSSES:
    t = y if loss == "mse" else jax.nn.softmax(y)
    vp, gp = diva_jax.loo_loss_and_derivative(a, t, features=z, reg=0.5, loss=loss)
    vd, gd = diva_jax.loo_loss_and_derivative(a, t, kernel=z @ z.T, reg=0.5, loss=loss)
    np.testing.assert_allclose(vp, vd, rtol=1e-10)
    np.testing.assert_allclose(gp, gd, rtol=1e-8, atol=1e-12)


def _reference_grad(a, y, x, reg, mask, loss, form, temperature=1.0):
  return jax.grad(cf.loo_loss_impl)(
      jnp.asarray(a), jnp.asarray(y), jnp.asarray(x), reg, jnp.asarray(mask, jnp.float64),
      temperature, form, loss)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("form", ["primal", "dual"])
@pytest.mark.parametrize("masked", [False, True])
def test_derivative_equals_autodiff_and_finite_differences(loss, form, masked):
  z, y, a = _problem(n=20, d=5, c=3, seed=3)
  if loss == "ce":
    y = np.asarray(jax.nn.one_hot(np.arange(20) % 3, 3))
  x = z if form == "primal" else z @ z.T
  kw = {"features": x} if form == "primal" else {"kernel": x}
  mask = (np.arange(20) % 3 != 0) if masked else np.ones(20, bool)
  reg, temp = 0.8, 0.7
  got = diva_jax.dataset_derivative(a, y, reg=reg, loss=loss, temperature=temp,
                                    eval_mask=mask if masked else None, **kw)
  ref = _reference_grad(a, y, x, reg, mask, loss, form, temp)
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-13)

  # Central finite differences of the public loss, at every coordinate, zeros included.
  f = lambda w: float(diva_jax.loo_loss(w, y, reg=reg, loss=loss, temperature=temp,
                                        eval_mask=mask if masked else None, **kw))
  eps = 1e-6
  fd = np.empty(20)
  for k in range(20):
    e = np.zeros(20)
    e[k] = eps
    lo = a - e
    if lo[k] < 0:  # one-sided at zero weights (weights must stay >= 0)
      fd[k] = (f(a + 2 * e) - f(a)) / (2 * eps)  # error O(eps), fine at this tolerance
    else:
      fd[k] = (f(a + e) - f(lo)) / (2 * eps)
  np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-6)
  if masked:  # the mask must matter
    unmasked = diva_jax.dataset_derivative(a, y, reg=reg, loss=loss, temperature=temp, **kw)
    assert np.max(np.abs(unmasked - got)) > 1e-3


def test_check_grads_through_public_loss_including_zero_weights():
  z, y, a = _problem(n=16, d=4, c=2)
  # Under jit the value checks are skipped (tracers), so the central differences of
  # check_grads may step to slightly negative weights around the zeros.
  f = jax.jit(lambda w: diva_jax.loo_loss(w, y, features=z, reg=0.6))
  # Mode fwd would need a JVP rule for the custom VJP; reverse is what users call.
  check_grads(f, (jnp.asarray(a),), order=1, modes=("rev",), eps=1e-6)
  fk = jax.jit(lambda w: diva_jax.loo_loss(w, y, kernel=z @ z.T, reg=0.6))
  check_grads(fk, (jnp.asarray(a),), order=1, modes=("rev",), eps=1e-6)
  # The reference closed form is smooth in every input to second order.
  ref = jax.jit(lambda w, yy, zz: cf.loo_loss_impl(w, yy, zz, 0.6, jnp.ones(16), 1.0,
                                                          "primal", "mse"))
  check_grads(ref, (jnp.asarray(a), jnp.asarray(y), jnp.asarray(z)), order=2, eps=1e-5,
              modes=("rev",))


def test_grad_of_user_code_uses_explicit_rule_and_other_inputs_get_autodiff():
  z, y, a = _problem(n=18, d=5, c=2)
  def user(w, zz):
    return diva_jax.loo_loss(w * 1.0, y, features=zz, reg=0.4) ** 2
  gw, gz = jax.jit(jax.grad(user, argnums=(0, 1)))(jnp.asarray(a), jnp.asarray(z))
  ref = lambda w, zz: cf.loo_loss_impl(w, jnp.asarray(y), zz, 0.4, jnp.ones(18), 1.0,
                                              "primal", "mse") ** 2
  rw, rz = jax.grad(ref, argnums=(0, 1))(jnp.asarray(a), jnp.asarray(z))
  np.testing.assert_allclose(gw, rw, rtol=1e-9, atol=1e-13)
  np.testing.assert_allclose(gz, rz, rtol=1e-9, atol=1e-13)


def test_jit_and_vmap_over_problems():
  z, y, a = _problem(n=20, d=5, c=2)
  ws = jnp.stack([jnp.asarray(a), jnp.ones(20), jnp.asarray(a) * 0.5])
  batched = jax.jit(jax.vmap(lambda w: diva_jax.dataset_derivative(w, y, features=z, reg=0.3)))
  got = batched(ws)
  for i in range(3):
    np.testing.assert_allclose(got[i], diva_jax.dataset_derivative(ws[i], y, features=z, reg=0.3),
                               rtol=1e-10, atol=1e-14)
  regs = jnp.array([0.1, 1.0, 10.0])
  losses = jax.vmap(lambda r: diva_jax.loo_loss(a, y, kernel=z @ z.T, reg=r))(regs)
  for r, l in zip(regs, losses):
    np.testing.assert_allclose(l, diva_jax.loo_loss(a, y, kernel=z @ z.T, reg=r), rtol=1e-10)


@pytest.mark.filterwarnings("ignore:select_reg")
def test_no_recompilation_when_weights_targets_or_reg_change():
  z, y, a = _problem(n=22, d=5, c=2, seed=9)
  # backend="xla": NumPy inputs on CPU would otherwise take the (uncompiled) host path.
  fn = loo._loo_value_and_grad_jit
  start = fn._cache_size()
  diva_jax.dataset_derivative(a, y, features=z, reg=0.3, backend="xla")
  before = fn._cache_size()
  assert before == start + 1  # the jitted path was reached (and compiled once)
  rng = np.random.default_rng(1)
  for k in range(4):
    diva_jax.dataset_derivative(rng.uniform(size=22), rng.normal(size=(22, 2)), features=z,
                                reg=0.1 * (k + 1), eval_mask=rng.uniform(size=22) > 0.2,
                                backend="xla")
  assert fn._cache_size() == before
  pred_fn = loo._loo_predictions_jit
  diva_jax.loo_predictions(a, y, kernel=z @ z.T, reg=1.0)
  before = pred_fn._cache_size()
  diva_jax.loo_predictions(a * 2, -y, kernel=z @ z.T, reg=3.0)
  assert pred_fn._cache_size() == before
  sel = reg_selection._grid_losses
  diva_jax.select_reg(y, features=z)
  before = sel._cache_size()
  diva_jax.select_reg(-y, features=z, rel_grid=np.logspace(-2, 2, 46))
  assert sel._cache_size() == before


@pytest.mark.parametrize("form", ["features", "kernel"])
def test_float32_close_to_float64_on_well_conditioned_problems(form):
  rng = np.random.default_rng(4)
  n, d = 200, 16
  z = rng.normal(size=(n, d))
  y = np.asarray(jax.nn.one_hot(rng.integers(0, 4, n), 4))
  a = rng.uniform(0.0, 1.5, n)
  reg = 0.05 * float(np.mean(np.sum(z * z, 1))) * (n / d)
  x = z if form == "features" else z @ z.T
  v64, g64 = diva_jax.loo_loss_and_derivative(a, y, reg=reg, **{form: x})
  v32, g32 = diva_jax.loo_loss_and_derivative(
      a.astype(np.float32), y.astype(np.float32), reg=reg, **{form: x.astype(np.float32)})
  assert g32.dtype == jnp.float32
  # Stated tolerance: 1e-4 relative on the value, 1e-3 of the largest entry on the gradient.
  np.testing.assert_allclose(v32, v64, rtol=1e-4)
  np.testing.assert_allclose(g32, g64, atol=1e-3 * float(np.max(np.abs(g64))))


def test_validation_derivative_matches_finite_differences_and_forms_agree():
  rng = np.random.default_rng(5)
  z, y, a = _problem(n=25, d=6, c=3, seed=5)
  zv, yv = rng.normal(size=(9, 6)), rng.normal(size=(9, 3))
  reg = 0.9
  val = diva_jax.validation_loss(a, y, yv, features=z, val_features=zv, reg=reg)
  # Oracle: numpy refit and prediction.
  w = np.linalg.solve(z.T @ (a[:, None] * z) + reg * np.eye(6), z.T @ (a[:, None] * y))
  np.testing.assert_allclose(val, np.mean(np.sum((zv @ w - yv) ** 2, 1)), rtol=1e-10)
  g = diva_jax.validation_derivative(a, y, yv, features=z, val_features=zv, reg=reg)
  gk = diva_jax.validation_derivative(a, y, yv, kernel=z @ z.T, cross_kernel=z @ zv.T, reg=reg)
  np.testing.assert_allclose(g, gk, rtol=1e-8, atol=1e-12)
  # Closed form: dL/da_i = mean_v (z_i^T C z_v) <r_i, g_v>.
  c_inv = np.linalg.inv(z.T @ (a[:, None] * z) + reg * np.eye(6))
  r = y - z @ w
  gv = 2 * (zv @ w - yv) / 9
  np.testing.assert_allclose(g, np.sum((z @ c_inv @ zv.T @ gv) * r, 1), rtol=1e-8, atol=1e-12)
  eps = 1e-6
  for k in (0, 1, 4):
    e = np.zeros(25)
    e[k] = eps
    f = lambda w_: float(diva_jax.validation_loss(w_, y, yv, features=z, val_features=zv,
                                                   reg=reg))
    fd = (f(a + 2 * e) - f(a)) / (2 * eps) if a[k] == 0 else (f(a + e) - f(a - e)) / (2 * eps)
    np.testing.assert_allclose(g[k], fd, rtol=1e-4, atol=1e-7)
  preds = diva_jax.ridge_predict(a, y, features=z, test_features=zv, reg=reg)
  np.testing.assert_allclose(preds, zv @ w, rtol=1e-10)


@pytest.mark.parametrize("form", ["features", "kernel", "wide_features"])
def test_select_reg_matches_grid_of_exact_loo(form):
  rng = np.random.default_rng(6)
  n, d = 60, (80 if form == "wide_features" else 10)
  z = rng.normal(size=(n, d))
  y = z @ rng.normal(size=(d, 2)) * 0.3 + rng.normal(size=(n, 2))
  x = z @ z.T if form == "kernel" else z
  kw = {"kernel": x} if form == "kernel" else {"features": x}
  sel = diva_jax.select_reg(y, rel_grid=np.logspace(-3, 2, 11), **kw)
  scale = np.mean(np.sum(z * z, 1))
  np.testing.assert_allclose(sel.scale, scale, rtol=1e-10)
  np.testing.assert_allclose(sel.grid, np.logspace(-3, 2, 11) * scale, rtol=1e-10)
  for reg, l in zip(sel.grid, sel.losses):
    np.testing.assert_allclose(l, diva_jax.loo_loss(np.ones(n), y, reg=reg, **kw), rtol=1e-7)
  assert sel.reg == sel.grid[int(np.argmin(sel.losses))]
  # An interior optimum for this problem (signal plus noise): the search is not degenerate.
  assert 0 < int(np.argmin(sel.losses)) < 10


# ------------------------------------------------------------------------------------------
# Bad input.
# ------------------------------------------------------------------------------------------

_Z, _Y, _A = _problem(n=10, d=3, c=2, zeros=())


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=_Z, kernel=_Z @ _Z.T), "exactly one of features"),
    (dict(), "exactly one of features"),
    (dict(features=_Z[:9]), r"features shape \(9, 3\) vs weights shape \(10,\)"),
    (dict(features=_Z[:, :, None]), r"features must have shape \[n, d\]"),
    (dict(kernel=_Z @ _Z[:9].T), r"kernel must be a square"),
    (dict(kernel=np.eye(9)), r"kernel shape \(9, 9\) vs weights shape \(10,\)"),
    (dict(kernel=_Z @ _Z.T + np.triu(np.ones((10, 10)))), "kernel must be symmetric"),
    (dict(features=np.where(np.eye(10, 3) > 0, np.nan, _Z)), "features must be finite"),
    (dict(kernel=np.full((10, 10), np.inf)), "kernel must be finite"),
    (dict(features=_Z, reg=0.0), "reg must be a finite number > 0, got 0.0"),
    (dict(features=_Z, reg=-1.0), "reg must be a finite number > 0"),
    (dict(features=_Z, reg=np.nan), "reg must be a finite number > 0"),
    (dict(features=_Z, weights=-_A), r"weights must be >= 0"),
    (dict(features=_Z, weights=np.where(np.arange(10) == 2, np.inf, _A)), "weights must be finite"),
    (dict(features=_Z, weights=_A[:, None]), r"weights must have shape \[n\]"),
    (dict(features=_Z, targets=_Y[:, 0]), r"targets\[:, None\]"),
    (dict(features=_Z, targets=_Y[:8]), r"targets shape \(8, 2\) vs weights shape \(10,\)"),
    (dict(features=_Z, targets=np.where(np.eye(10, 2) > 0, np.nan, _Y)), "targets must be finite"),
    (dict(features=_Z, eval_mask=np.zeros(10, bool)), "eval_mask selects no sample"),
    (dict(features=_Z, eval_mask=np.ones(9, bool)), r"eval_mask must have shape \[n\]"),
    (dict(features=_Z, loss="hinge"), "loss must be one of"),
    (dict(features=_Z, temperature=0.0), "temperature must be a finite number > 0"),
    (dict(features=_Z.astype(np.int32)), "features must be a floating-point array"),
])
def test_bad_input_raises_clear_value_error(kwargs, match):
  kw = dict(weights=_A, targets=_Y, reg=1.0)
  kw.update(kwargs)
  w, t = kw.pop("weights"), kw.pop("targets")
  for fn in (diva_jax.loo_loss, diva_jax.dataset_derivative):
    with pytest.raises(ValueError, match=match):
      fn(w, t, **kw)
  if "loss" not in kw and "eval_mask" not in kw and "temperature" not in kw:
    with pytest.raises(ValueError, match=match):
      diva_jax.loo_predictions(w, t, **kw)


def test_failed_float32_factorisation_raises_instead_of_returning_nan():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(50, 2)).astype(np.float32)
  k = (base @ base.T) * 1e6  # rank 2, 50 x 50: singular in float32 at tiny reg
  y = rng.normal(size=(50, 2)).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(ValueError, match="larger reg .*float64"):
      diva_jax.dataset_derivative(np.ones(50, np.float32), y, kernel=k, reg=1e-30)


def test_validation_bad_input():
  z, y, a = _problem(n=10, d=3, c=2)
  with pytest.raises(ValueError, match=r"val_features must have shape \[m, 3\]"):
    diva_jax.validation_loss(a, y, y, features=z, val_features=z[:, :2], reg=1.0)
  with pytest.raises(ValueError, match="cross_kernel="):
    diva_jax.validation_loss(a, y, y, kernel=z @ z.T, val_features=z, reg=1.0)
  with pytest.raises(ValueError, match=r"val_targets must have shape \[m, c\] = \[4, 2\]"):
    diva_jax.validation_derivative(a, y, y, features=z, val_features=z[:4], reg=1.0)


_xla_jit = jax.jit(_xla.value_and_grad, static_argnames=("form", "loss", "with_grad"))


def _xla_vg(*args, form, loss, with_grad=True):
  """The XLA backend, jitted (the code GPUs and TPUs run)."""
  return _xla_jit(*args, form=form, loss=loss, with_grad=with_grad)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_host_blas_path_equals_xla_path(loss):
  """On CPU the float64 primal value and gradient run in NumPy/SciPy BLAS (diva_jax.loo.backends.host);
  they must equal the XLA implementation that GPUs and TPUs run."""
  from diva_jax.loo.backends import host as _host
  z, y, a = _problem(n=40, d=6, c=3, seed=11)
  if loss == "ce":
    y = np.eye(3)[np.arange(40) % 3]
  mask = (np.arange(40) % 4 != 0).astype(np.float64)
  host_v, host_g = _host.primal_value_and_grad(a, y, z, 0.7, mask, 0.5, loss=loss,
                                               with_grad=True)
  xla_v, xla_g = _xla_vg(jnp.asarray(a), jnp.asarray(y), jnp.asarray(z), 0.7,
                         jnp.asarray(mask), 0.5, form="primal", loss=loss)
  np.testing.assert_allclose(host_v, xla_v, rtol=1e-12)
  np.testing.assert_allclose(host_g, xla_g, rtol=1e-9, atol=1e-14)
  # Negative weights (possible only under a user's jit) take the GEMM branch in both.
  neg = a.copy()
  neg[3] = -0.05
  hv, hg = _host.primal_value_and_grad(neg, y, z, 0.7, mask, 0.5, loss=loss, with_grad=True)
  xv, xg = _xla_vg(jnp.asarray(neg), jnp.asarray(y), jnp.asarray(z), 0.7, jnp.asarray(mask),
                   0.5, form="primal", loss=loss)
  np.testing.assert_allclose(hv, xv, rtol=1e-12)
  np.testing.assert_allclose(hg, xg, rtol=1e-9, atol=1e-14)
  # ... and both equal autodiff through the reference closed form (an independent oracle;
  # with a negative weight N = B^T diag(a u) B is indefinite even for the squared error).
  ref = jax.grad(cf.loo_loss_impl)(jnp.asarray(neg), jnp.asarray(y), jnp.asarray(z),
                                          0.7, jnp.asarray(mask), 0.5, "primal", loss)
  np.testing.assert_allclose(hg, ref, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("seed", [0, 1])
def test_host_primal_float32_and_mixed_signs(loss, seed):
  """The host primal path in float32 (triangular tricks: syrk per sign, trmm on N's
  triangle, blocked) against float64 autodiff of the reference closed form; blocks smaller
  than n and weights with zeros exercise every branch."""
  from diva_jax.loo.backends import host as _host
  rng = np.random.default_rng(seed)
  n, d, c = 300, 20, 4
  z = rng.standard_normal((n, d))
  y = np.eye(c)[rng.integers(0, c, n)]
  a = rng.uniform(0.0, 2.0, n)
  a[::7] = 0.0
  mask = (np.arange(n) % 5 != 0).astype(np.float64)
  ref_v, ref_g = jax.value_and_grad(cf.loo_loss_impl)(
      jnp.asarray(a), jnp.asarray(y), jnp.asarray(z), 3.0, jnp.asarray(mask), 0.5, "primal",
      loss)
  v32, g32 = _host.primal_value_and_grad(*(x.astype(np.float32) for x in (a, y, z)), 3.0,
                                         mask.astype(np.float32), 0.5, loss=loss,
                                         with_grad=True)
  assert g32.dtype == np.float32
  np.testing.assert_allclose(v32, ref_v, rtol=1e-5)
  assert np.linalg.norm(g32 - ref_g) <= 1e-4 * np.linalg.norm(ref_g)
  # The blocked helpers against dense products, blocks that do not divide n.
  bt = np.asfortranarray(z.T)
  w = rng.standard_normal(n) * (np.arange(n) % 3 != 0)
  upper = _host.signed_gram_upper_t(bt, w, buf=np.empty((64, d)))
  np.testing.assert_allclose(np.triu(upper), np.triu(z.T @ (w[:, None] * z)), atol=1e-10)
  full = np.triu(upper) + np.triu(upper, 1).T
  np.testing.assert_allclose(_host.quadratic_forms_t(bt, upper, block=37),
                             np.einsum("kj,jl,kl->k", z, full, z), rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(np.triu(_host.gram_upper(z, np.sqrt(a), buf=np.empty((41, d)))),
                             np.triu(z.T @ (a[:, None] * z)), atol=1e-10)
  c = np.ones((d, d), order="F")
  np.testing.assert_allclose(np.triu(_host.syrk_upper(z, c, -0.5)),
                             np.triu(1.0 - 0.5 * z.T @ z), atol=1e-10)
  for a_, b_ in ((z, z[:5].T), (z.T, z), (np.asfortranarray(z)[::2], z[:20, :3])):  # any layout
    np.testing.assert_allclose(_host.mm(a_, b_), a_ @ b_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_host_dual_path_equals_xla_path(loss, with_grad):
  """The float64 dual form on CPU (diva_jax.loo.backends.host: Cholesky + triangular inverse for the
  value, trsm + syrk for the gradient) equals the XLA implementation, zero weights included."""
  from diva_jax.loo.backends import host as _host
  z, y, a = _problem(n=30, d=40, c=3, seed=12)
  if loss == "ce":
    y = np.eye(3)[np.arange(30) % 3]
  mask = (np.arange(30) % 4 != 0).astype(np.float64)
  kern = z @ z.T
  hv, hg = _host.dual_value_and_grad(a, y, kern, 0.7, mask, 0.5, loss=loss, with_grad=with_grad)
  args = (jnp.asarray(a), jnp.asarray(y), jnp.asarray(kern), 0.7, jnp.asarray(mask), 0.5)
  if with_grad:
    xv, xg = _xla_vg(*args, form="dual", loss=loss)
    np.testing.assert_allclose(hg, xg, rtol=1e-8, atol=1e-13)
  else:
    assert hg is None
    xv, _ = _xla_vg(*args, form="dual", loss=loss, with_grad=False)
  np.testing.assert_allclose(hv, xv, rtol=1e-10)


@pytest.mark.parametrize("kind", ["primal64", "primal32", "dual64", "wide64"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_eager_host_path_equals_traced_path(kind, loss):
  """Concrete CPU inputs take the host path directly (no copies into jax.Arrays); traced
  inputs take the jitted path. Both give the same value and derivative, and the eager
  path returns jax.Arrays in the input's dtype."""
  dtype = np.float32 if kind.endswith("32") else np.float64
  z, y, a = _problem(n=60, d=80 if kind == "wide64" else 7, c=3, seed=21)
  if loss == "ce":
    y = np.eye(3)[np.arange(60) % 3]
  a[::9] = 0.0
  mask = np.arange(60) % 3 != 1
  x = {"features": z.astype(dtype)} if kind != "dual64" else {"kernel": z @ z.T}
  y, a = y.astype(dtype), a.astype(dtype)
  kw = dict(reg=0.9, loss=loss, eval_mask=mask, temperature=0.7, **x)
  value, grad = diva_jax.loo_loss_and_derivative(a, y, **kw)
  assert isinstance(grad, jax.Array) and grad.dtype == dtype and grad.shape == (60,)
  t_value, t_grad = jax.jit(lambda w: diva_jax.loo_loss_and_derivative(w, y, **kw))(a)
  tol = 2e-5 if dtype == np.float32 else 1e-10
  np.testing.assert_allclose(value, t_value, rtol=tol)
  np.testing.assert_allclose(grad, t_grad, rtol=tol, atol=tol * np.abs(t_grad).max())
  np.testing.assert_allclose(diva_jax.loo_loss(a, y, **kw), value, rtol=tol)
  # A jax.Array committed to another CPU device takes the eager path too.
  dev = jax.devices()[-1]
  v2, g2 = diva_jax.loo_loss_and_derivative(jax.device_put(a, dev), y, **kw)
  np.testing.assert_allclose(g2, grad, rtol=tol, atol=tol * np.abs(t_grad).max())
