"""DIVA in the training loop (`diva_jax.curation.training`) and its binary: the weight step
against a float64 brute-force LOO derivative at the current parameters of a tiny network,
checkpoint round trips, the `:runlocal` smoke run and bad configs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import loopback
from diva_jax.curation import training
from experiments.studies import train_nets
from experiments.studies import train_with_diva

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_loo_ce(feats, y, w, reg, t):
  """Mean LOO cross-entropy of the weighted ridge head, each sample refit without it."""
  n, d = feats.shape
  total = 0.0
  for i in range(n):
    a = w.copy()
    a[i] = 0.0
    coef = np.linalg.solve(feats.T @ (a[:, None] * feats) + reg * np.eye(d),
                           feats.T @ (a[:, None] * y))
    f = feats[i] @ coef / t
    f = f - f.max()
    total += -(y[i] @ (f - np.log(np.exp(f).sum())))
  return total / n


def test_weight_step_matches_brute_force_derivative_at_current_parameters():
  rng = np.random.default_rng(0)
  n, d_in, c = 30, 5, 3
  x = rng.normal(size=(n, d_in))
  labels = rng.integers(0, c, n)
  y = np.eye(c)[labels]
  params = train_nets.init_head(jax.random.PRNGKey(1), d_in, 8, c)
  params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
  feats = np.asarray(train_nets.hidden_features(params, jnp.asarray(x)), np.float64)
  feats = np.concatenate([feats, np.ones((n, 1))], 1)
  tx = optax.sgd(0.5)  # a plain step: w <- max(0, w - 0.5 g)
  state = training.init(n, tx, dtype=jnp.float64)
  state = state._replace(weights=jnp.asarray(rng.uniform(0.5, 1.5, n)))
  w0 = np.asarray(state.weights)
  new = training.update(state, tx, feats, y, reg=0.3, loss="ce", temperature=0.3)
  h = 1e-6
  fd = np.array([(_brute_loo_ce(feats, y, w0 + h * np.eye(n)[i], 0.3, 0.3)
                  - _brute_loo_ce(feats, y, w0 - h * np.eye(n)[i], 0.3, 0.3)) / (2 * h)
                 for i in range(n)])
  np.testing.assert_allclose(np.asarray(new.derivative), fd, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(new.weights), np.maximum(w0 - 0.5 * fd, 0.0),
                             rtol=1e-6, atol=1e-9)
  assert float(new.loo_loss) == pytest.approx(_brute_loo_ce(feats, y, w0, 0.3, 0.3), rel=1e-9)
  assert int(new.step) == 1
  # The default rule: reg = 10x the exact-LOO optimum on these features; normalised step.
  tx2 = training.weight_optimizer(0.2)
  s2 = training.update(training.init(n, tx2, dtype=jnp.float64), tx2, feats, y)
  g = np.asarray(s2.derivative)
  np.testing.assert_allclose(np.asarray(s2.weights), np.maximum(1 - 0.2 * g / np.abs(g).max(), 0))
  assert np.all(np.asarray(s2.weights) >= 0)


def test_search_update_takes_the_largest_armijo_step_of_the_brute_force_loo_loss():
  # The LOO loss chooses the step: the first of 16, 8, 4, ... (largest weight change)
  # whose brute-force float64 LOO loss decreases enough (Armijo), along -g / max|g|.
  rng = np.random.default_rng(4)
  n, c = 20, 3
  feats = np.concatenate([rng.normal(size=(n, 4)), np.ones((n, 1))], 1)
  labels = rng.integers(0, c, n)
  y = np.eye(c)[labels]
  w0 = np.ones(n)
  brute = lambda w: _brute_loo_ce(feats, y, w, 0.3, 0.3)
  h = 1e-6
  g = np.array([(brute(w0 + h * np.eye(n)[i]) - brute(w0 - h * np.eye(n)[i])) / (2 * h)
                for i in range(n)])
  state = training.init(n, training.weight_optimizer(), dtype=jnp.float64)
  new = training.search_update(state, feats, y, reg=0.3, max_step=16.0, armijo=0.5,
                               temperature=0.3)
  for k in range(11):
    cand = np.maximum(w0 - 16.0 / 2 ** k * g / np.abs(g).max(), 0.0)
    if brute(cand) <= brute(w0) + 0.5 * g @ (cand - w0):
      break
  assert k > 0   # the first size tried was refused: the search did something
  np.testing.assert_allclose(np.asarray(new.weights), cand, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(np.asarray(new.derivative), g, rtol=1e-5, atol=1e-9)
  assert float(new.loo_loss) == pytest.approx(brute(w0), rel=1e-9)
  # Further steps on the same features keep lowering the LOO loss.
  more = training.search_update(new, feats, y, reg=0.3, max_step=16.0, armijo=0.5,
                                steps=2, temperature=0.3)
  assert int(more.step) == 3
  assert brute(np.asarray(more.weights)) < brute(np.asarray(new.weights)) < brute(w0)
  assert np.all(np.asarray(more.weights) >= 0)
  with pytest.raises(ValueError, match="steps"):
    training.search_update(state, feats, y, reg=0.3, steps=0)
  with pytest.raises(ValueError, match="features must have shape"):
    training.search_update(state, feats[:3], y, reg=0.3)


def test_update_is_jittable_and_refuses_mismatched_shapes():
  rng = np.random.default_rng(2)
  feats, y = rng.normal(size=(20, 4)), np.eye(2)[rng.integers(0, 2, 20)]
  tx = training.weight_optimizer(0.1)
  state = training.init(20, tx, dtype=jnp.float64)
  jitted = jax.jit(lambda s, f, t, r: training.update(s, tx, f, t, reg=r))
  a = jitted(state, feats, y, 0.5)
  b = training.update(state, tx, feats, y, reg=0.5)
  np.testing.assert_allclose(np.asarray(a.weights), np.asarray(b.weights), rtol=1e-10)
  with pytest.raises(ValueError, match="features must have shape \\[n, d\\] with n = 20"):
    training.update(state, tx, feats[:5], y, reg=0.5)
  with pytest.raises(ValueError, match="targets must have shape \\[n, c\\] with n = 20"):
    training.update(state, tx, feats, y[:5], reg=0.5)
  with pytest.raises(ValueError, match="num_samples"):
    training.init(0, tx)
  assert float(training.weighted_mean(jnp.ones(3), jnp.zeros(3))) == 0.0
  assert float(training.weighted_mean(jnp.array([1.0, 3.0]), jnp.array([1.0, 3.0]))) == 2.5


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  rng = np.random.default_rng(3)
  feats, y = rng.normal(size=(15, 3)), np.eye(3)[rng.integers(0, 3, 15)]
  tx = optax.chain(training.weight_optimizer(0.2), optax.scale_by_adam())
  state = training.update(training.init(15, tx), tx, feats.astype(np.float32),
                          y.astype(np.float32), reg=0.4)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "diva", state)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "diva", jax.tree_util.tree_map(np.zeros_like, state))
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The restored state steps on exactly like the original.
  restored = type(state)(*restored) if not isinstance(restored, type(state)) else restored
  a = training.update(state, tx, feats.astype(np.float32), y.astype(np.float32), reg=0.4)
  b = training.update(restored, tx, feats.astype(np.float32), y.astype(np.float32), reg=0.4)
  np.testing.assert_array_equal(np.asarray(a.weights), np.asarray(b.weights))


def test_binary_runlocal_smoke_and_resume(tmp_path):
  wd = tmp_path / "w"
  cmd = [sys.executable, "-m", "experiments.train_with_diva", f"--workdir={wd}", "--verbosity=0",
         "--config=configs/train_with_diva.py:runlocal", "--config.epochs=3",
         "--config.methods=('plain','diva','oracle')"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads((wd / "results.json").read_text())
  assert [r_["method"] for r_ in rows] == ["plain", "diva", "oracle"]
  diva = rows[1]
  assert diva["derivative_seconds"] > 0 and 0 <= diva["detection_f1"] <= 1
  assert (wd / "curves.csv").exists() and (wd / "summary.csv").exists()
  assert (wd / "curves.png").exists()
  # Resumable: a rerun loads every stage and gives the same rows.
  r2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r2.returncode == 0 and "loaded" in r2.stderr
  assert json.loads((wd / "results.json").read_text()) == rows


@pytest.mark.parametrize("override, match", [
    ("--config.noise=('uniform:1.5',)", "noise entries"),
    ("--config.methods=('plain','magic')", "methods must be"),
    ("--config.epochs=0", "epochs"),
    ("--config.gce_q=2.0", "gce_q"),
    ("--config.settings=('digits',)", "dataset:max_train"),
    ("--config.trunk=block:17", "trunk must be"),
    ("--config.trunk=block:16", "needs backbone='efficientnet_lite0'"),
    ("--config.diva_reg=sometimes", "diva_reg"),
    ("--config.diva_step=adam", "diva_step"),
    ("--config.diva_inner_steps=0", "diva_inner_steps"),
])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, override, match):
  wd = tmp_path / "w"
  r = subprocess.run([sys.executable, "-m", "experiments.train_with_diva", f"--workdir={wd}",
                      "--config=configs/train_with_diva.py:runlocal", override], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr
  assert not wd.exists()


def _tiny_config(**kw):
  from configs import train_with_diva as cfg
  c = cfg.get_config()
  c.epochs, c.train_batch_size, c.diva_start = 2, 16, 1
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_training_from_a_block_is_the_same_split_over_devices():
  # trunk='block:15': blocks 15.., the head convolution and a new classifier train on the
  # activations entering block 15. Split over 2 and 8 (fake CPU) devices, the training is
  # the one device's, up to the order of float sums.
  rng = np.random.default_rng(0)
  n, c = 48, 3
  shape = train_nets.models.activation_shape(15, 32)
  x = rng.normal(size=(n, *shape)).astype(np.float32)
  labels = rng.integers(0, c, n)
  noisy = labels.copy()
  noisy[:12] = (noisy[:12] + 1) % c
  flipped = noisy != labels
  config = _tiny_config(trunk="block:15", image_size=32)
  net = train_nets.make_net(config, train_nets.Inputs(x, x[:16]), c)
  runs = {k: train_with_diva.train_one(config, "diva_both", net, x, noisy, labels, flipped,
                                       x[:16], labels[:16], c, 0, devices=jax.devices()[:k])
          for k in (1, 2, 8)}
  for k in (2, 8):
    for key in ("test_error", "mean_weight_noisy", "mean_weight_clean"):
      np.testing.assert_allclose(runs[k]["curves"][key], runs[1]["curves"][key], rtol=1e-4,
                                 atol=1e-5)
  assert runs[1]["curves"]["mean_weight_noisy"][-1] != 1.0   # a weight step was taken


def test_whole_network_trunk_is_efficientnet_on_the_images():
  # trunk='block:0' trains all of EfficientNet-Lite0 from uint8 images: at initialisation
  # its penultimate features are the pretrained backbone's pooled features.
  images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), np.uint8)
  net = train_nets.efficientnet_net(0, 4, 32)
  pen, out = jax.jit(net.apply)(net.init(jax.random.PRNGKey(0)), jnp.asarray(images))
  ref = train_nets.models.efficientnet_lite0(pretrained=True, input_size=32)
  np.testing.assert_allclose(pen, ref.features(images), rtol=1e-4, atol=1e-4)
  assert out.shape == (3, 4)


@pytest.mark.slow
def test_binary_on_two_processes_trains_from_a_cached_block_like_one_process(tmp_path):
  # Two processes on loopback (one CPU device each, jax.distributed with gloo collectives):
  # every batch is split over both processes' devices. The activations entering block 15 are
  # cached (one file per split), both derivative variants take weight steps, and the results
  # are those of the same run in this process (its 8 fake devices) on the same cache.
  cache = tmp_path / "c"
  flags = ["--config=configs/train_with_diva.py", "--config.settings=('digits:96',)",
           "--config.max_test=64", "--config.image_size=32", "--config.seeds=1",
           "--config.noise=('uniform:0.3',)", "--config.train_batch_size=32",
           "--config.trunk=block:15", "--config.epochs=2",
           "--config.methods=('plain','diva','diva_frozen')", "--config.diva_reg=every_step",
           "--config.plots=False", f"--config.cache_dir={cache}", "--verbosity=0"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("JAX_ENABLE_X64", None)
  port = loopback.free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train_with_diva", f"--workdir={tmp_path / 'w'}"]
      + loopback.distributed_flags(port, 2, i) + flags, cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for log in loopback.wait(procs, timeout=600):
    assert "diva: each batch of 32 split over 2 devices of 2 processes" in log, log
  rows = json.loads((tmp_path / "w" / "results.json").read_text())
  assert [r_["method"] for r_ in rows] == ["plain", "diva", "diva_frozen"]
  assert json.loads((tmp_path / "w" / "metrics.json").read_text())["parallelism"][
      "processes"] == 2
  names = sorted(os.listdir(cache))
  assert "digits-train96-efficientnet_lite0_upto15-32x32.npz" in names
  assert "digits-test64-efficientnet_lite0_upto15-32x32.npz" in names
  curves = (tmp_path / "w" / "curves.csv").read_text().splitlines()
  last = {line.split(",")[3]: line.split(",") for line in curves[1:] if line.split(",")[4] == "2"}
  for m in ("diva", "diva_frozen"):
    assert float(last[m][6]) != 1.0 and float(last[m][7]) != 1.0
  assert float(last["plain"][6]) == 1.0
  # The same run in this process, over its 8 devices, on the two-process run's cache.
  config = _tiny_config(settings=("digits:96",), max_test=64, image_size=32, seeds=1,
                        noise=("uniform:0.3",), train_batch_size=32, trunk="block:15",
                        epochs=2, methods=("plain", "diva", "diva_frozen"), diva_start=1,
                        diva_reg="every_step", plots=False, cache_dir=str(cache))
  train_with_diva.run(config, str(tmp_path / "one"))
  ref = json.loads((tmp_path / "one" / "results.json").read_text())
  for a, b in zip(rows, ref):
    assert a["method"] == b["method"]
    assert a["test_error"] == pytest.approx(b["test_error"], abs=1e-6)
    assert a["flagged"] == b["flagged"]
    assert a["detection_f1"] == (None if b["detection_f1"] is None
                                 else pytest.approx(b["detection_f1"], abs=1e-9))
