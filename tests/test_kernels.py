"""diva_jax.kernels against scikit-learn and brute force in float64, under jit, and as the
dual form's kernel (kernel ridge predictions against scikit-learn's KernelRidge)."""

import jax
import numpy as np
import pytest

import diva_jax


def _x(n=40, d=6, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d))


def test_against_sklearn_float64():
  from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel
  x, z = _x(), _x(15, seed=1)
  brute = ((x[:, None] - x[None]) ** 2).sum(-1)
  med = np.median(brute[np.triu_indices(40, 1)])
  with jax.enable_x64(True):
    np.testing.assert_allclose(diva_jax.squared_distances(x, z),
                               euclidean_distances(x, z, squared=True), atol=1e-10)
    assert float(diva_jax.median_sq_distance(x)) == pytest.approx(med, rel=1e-12)
    k = np.asarray(diva_jax.rbf_kernel(x, bandwidth=0.5))
    kz = np.asarray(diva_jax.rbf_kernel(x, z, scale=med))
  assert k.dtype == np.float64
  np.testing.assert_allclose(k, rbf_kernel(x, gamma=1 / (0.5 * med)), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(kz, rbf_kernel(x, z, gamma=1 / med), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.diag(k), 1.0)


def test_jit_and_float32():
  x = _x().astype(np.float32)
  k = jax.jit(lambda a: diva_jax.rbf_kernel(a, bandwidth=2.0))(x)
  assert k.dtype == np.float32 and k.shape == (40, 40)
  with jax.enable_x64(True):
    ref = np.asarray(diva_jax.rbf_kernel(x.astype(np.float64), bandwidth=2.0))
  np.testing.assert_allclose(k, ref, atol=1e-5)


def test_dual_form_matches_kernel_ridge():
  # The kernel in the dual form: ridge_predict equals scikit-learn's KernelRidge (alpha = reg)
  # fit on the same RBF kernel.
  from sklearn.kernel_ridge import KernelRidge
  x, z = _x(60, 4, seed=2), _x(20, 4, seed=3)
  y = np.eye(3)[np.random.default_rng(4).integers(0, 3, 60)]
  with jax.enable_x64(True):
    s = float(diva_jax.median_sq_distance(x))
    k = np.asarray(diva_jax.rbf_kernel(x))
    kx = np.asarray(diva_jax.rbf_kernel(x, z, scale=s))
    pred = np.asarray(diva_jax.ridge_predict(np.ones(60), y, kernel=k, reg=0.3,
                                             cross_kernel=kx))
  ref = KernelRidge(alpha=0.3, kernel="rbf", gamma=1 / s).fit(x, y).predict(z)
  np.testing.assert_allclose(pred, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("call, match", [
    (lambda: diva_jax.rbf_kernel(np.ones(5)),
     r"x1 must be a real \[n, d\] array, got shape \(5,\)"),
    (lambda: diva_jax.rbf_kernel(_x(), _x(5, 3)), r"x2 must have the columns of x1: \[m, 6\]"),
    (lambda: diva_jax.rbf_kernel(_x(), bandwidth=0.0), "bandwidth must be a finite number > 0"),
    (lambda: diva_jax.rbf_kernel(_x(), scale=-1.0), "scale must be a finite number > 0"),
    (lambda: diva_jax.rbf_kernel(np.ones((4, 2))), "median squared distance of x1 is 0"),
    (lambda: diva_jax.median_sq_distance(_x(1)), "at least 2 rows"),
    (lambda: diva_jax.squared_distances(np.array([[np.nan, 1.0]])), "x1 must be finite"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
