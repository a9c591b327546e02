"""Streamed primal LOO equals the in-memory closed form (itself checked against brute force)."""

import jax
import numpy as np
import pytest

import diva_jax
from diva_jax.loo.streaming import driver as streaming


def _problem(n=700, d=12, c=4, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, d))
  y = np.eye(c)[rng.integers(0, c, n)]
  a = rng.uniform(0.0, 2.0, n)
  a[:7] = 0.0
  mask = rng.uniform(size=n) > 0.25
  return z, y, a, mask


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_streamed_equals_in_memory_float64(loss):
  z, y, a, mask = _problem()
  v, g = diva_jax.loo_loss_and_derivative(a, y, features=z, reg=2.0, loss=loss, eval_mask=mask,
                                          temperature=0.5)
  calls = []
  r, preds = streaming.streamed_loo_loss_and_derivative(
      a, y, features=z, reg=2.0, loss=loss, eval_mask=mask, temperature=0.5, block_size=256,
      return_predictions=True, progress=lambda done, total: calls.append((done, total)))
  assert isinstance(r, diva_jax.LooResult)
  np.testing.assert_allclose(r.value, v, rtol=1e-12)
  np.testing.assert_allclose(r.derivative, g, rtol=1e-9, atol=1e-14 + 1e-9 * np.abs(g).max())
  np.testing.assert_allclose(preds, diva_jax.loo_predictions(a, y, features=z, reg=2.0),
                             rtol=1e-10, atol=1e-12)
  # 3 blocks (256, 256, 188 rows) in each of 3 passes; progress(done, total = 3 n).
  assert calls == [((k - 1) * 700 + s, 2100) for k in (1, 2, 3) for s in (256, 512, 700)]


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_streamed_host_and_xla_backends_agree(loss):
  z, y, a, mask = _problem(n=300, d=9, seed=3)
  kw = dict(features=z, reg=1.0, loss=loss, eval_mask=mask, temperature=0.7, block_size=128)
  host = streaming.streamed_loo_loss_and_derivative(a, y, backend="host", **kw)
  xla = streaming.streamed_loo_loss_and_derivative(a, y, backend="xla", **kw)
  np.testing.assert_allclose(xla.value, host.value, rtol=1e-12)
  np.testing.assert_allclose(xla.derivative, host.derivative, rtol=1e-9,
                             atol=1e-12 * np.abs(host.derivative).max())


def test_streamed_float32_close_to_float64_and_sources_agree(tmp_path):
  z, y, a, _ = _problem(n=900, d=16, seed=1)
  ref = streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=5.0, block_size=300)
  z32 = z.astype(np.float32)
  r32 = streaming.streamed_loo_loss_and_derivative(a, y, features=z32, reg=5.0, block_size=300)
  assert r32.derivative.dtype == np.float32
  np.testing.assert_allclose(r32.value, ref.value, rtol=1e-5)
  np.testing.assert_allclose(r32.derivative, ref.derivative,
                             atol=1e-3 * np.abs(ref.derivative).max())
  # From a memory-mapped .npy file on disk and from a function: identical to in memory.
  path = tmp_path / "feats.npy"
  np.save(path, z32)
  r_file = streaming.streamed_loo_loss_and_derivative(a, y, features=streaming.npy_source(path), reg=5.0,
                                                      block_size=300)
  src = streaming.FunctionSource(lambda s, e: z32[s:e], 900, 16, np.float32)
  r_fn = streaming.streamed_loo_loss_and_derivative(a, y, features=src, reg=5.0, block_size=300)
  np.testing.assert_array_equal(r_file.derivative, r32.derivative)
  np.testing.assert_array_equal(r_fn.derivative, r32.derivative)


def test_streamed_sharded_over_8_devices_equals_single_device():
  assert jax.device_count() >= 8, "conftest should give 8 fake CPU devices"
  z, y, a, mask = _problem(n=1000, d=10, seed=2)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  single = streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=1.5, eval_mask=mask,
                                                      block_size=200)
  sharded = streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=1.5, eval_mask=mask,
                                                       block_size=200, mesh=mesh)
  np.testing.assert_allclose(sharded.value, single.value, rtol=1e-12)
  np.testing.assert_allclose(sharded.derivative, single.derivative, rtol=1e-9,
                             atol=1e-9 * np.abs(single.derivative).max())


def test_streamed_bad_input():
  z, y, a, _ = _problem(n=50, d=4)
  with pytest.raises(ValueError, match="weights has 49 entries but features has 50 rows"):
    streaming.streamed_loo_loss_and_derivative(a[:49], y[:49], features=z, reg=1.0)
  with pytest.raises(ValueError, match="reg must be a finite number > 0"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=0.0)
  with pytest.raises(ValueError, match="weights must be >= 0"):
    streaming.streamed_loo_loss_and_derivative(-a - 1, y, features=z, reg=1.0)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=1.0, block_size=0)
  bad = z.copy()
  bad[40, 1] = np.nan
  with pytest.raises(ValueError, match=r"rows \[32, 48\) contain NaN"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=bad, reg=1.0, block_size=16)
  src = streaming.FunctionSource(lambda s, e: z[s:e, :3], 50, 4)
  with pytest.raises(ValueError, match=r"returned shape \(16, 3\), expected \(16, 4\)"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=src, reg=1.0, block_size=16)


def test_streamed_nonfinite_features_are_caught_in_every_pass():
  """The host passes check their small outputs instead of scanning each block: a NaN or Inf
  feature must still be reported with its block, whatever its weight and whichever pass
  first sees it (a function source may return different rows on a later pass)."""
  z, y, a, _ = _problem(n=50, d=4)
  a[40] = 0.0  # zero weight: still caught (inf * 0 and nan * 0 are NaN)
  for value in (np.nan, np.inf, -np.inf):
    bad = z.copy()
    bad[40, 2] = value
    with pytest.raises(ValueError, match=r"rows \[32, 48\) contain NaN or Inf"):
      streaming.streamed_loo_loss_and_derivative(a, y, features=bad, reg=1.0, block_size=16)
  calls = {"n": 0}

  def flaky(s, e):  # finite on pass 1, a NaN in rows [16, 32) on pass 2
    calls["n"] += 1
    out = z[s:e].copy()
    if calls["n"] > 4 and s == 16:
      out[3, 0] = np.nan
    return out

  with pytest.raises(ValueError, match=r"rows \[16, 32\) contain NaN or Inf"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=streaming.FunctionSource(flaky, 50, 4, np.float64), reg=1.0, block_size=16)
  # Finite features whose products overflow float32 get their own message.
  big = (z * 1e20).astype(np.float32)
  with pytest.raises(ValueError, match="overflows float32"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=big, reg=1.0, block_size=16)


def test_streamed_float32_refuses_an_inaccurate_problem():
  """A nearly singular Gram matrix at a tiny reg: float32 streamed passes raise (asking for
  float64) instead of returning a wrong derivative; float64 computes it."""
  rng = np.random.default_rng(5)
  base = rng.normal(size=(400, 3))
  z = np.concatenate([base, base @ rng.normal(size=(3, 9)) + 1e-2 * rng.normal(size=(400, 9))], 1)
  y = np.eye(3)[rng.integers(0, 3, 400)]
  a = np.ones(400)
  with pytest.raises(ValueError, match="float32 is not accurate enough"):
    streaming.streamed_loo_loss_and_derivative(a, y, features=z.astype(np.float32), reg=1e-3,
                                               block_size=128)
  r64 = streaming.streamed_loo_loss_and_derivative(a, y, features=z, reg=1e-3, block_size=128)
  assert np.all(np.isfinite(r64.derivative))
