"""The reweighting study runs end to end (tiny: digits pixels, one seed) and its numbers agree
with the library function it reports on."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

import diva_jax
from diva_jax.curation import steps as curation
from diva_jax.app import common
from experiments.studies import reweight_study
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*variants):
  spec = importlib.util.spec_from_file_location(
      "_reweight_config", os.path.join(REPO, "configs", "reweight_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(",".join(variants))


def test_reweight_study_tiny(tmp_path):
  c = _config("runlocal")
  c.settings, c.seeds, c.noise_rates = ("digits:pixels:10:0",), 1, (0.3,)
  c.steps, c.random_repeats, c.validation_folds = (1, 2), 1, 2
  out = reweight_study.run(c, str(tmp_path))
  rules = {r["rule"]: r for r in out["runs"]}
  assert set(rules) == {"mse/x1/norm0.2/1", "mse/x1/norm0.2/2", "mse/x1/ls1.0/1",
                        "mse/x1/ls1.0/2", "selected by validation"}
  # The default rule's change, recomputed with the library on the same draw.
  from diva_jax import data
  train, test = data.load("digits", "train"), data.load("digits", "test")
  x, xt = common.standardize(train.images.reshape(len(train.labels), -1) / 255.0,
                             test.images.reshape(len(test.labels), -1) / 255.0)
  rng = np.random.default_rng([0, 7])
  idx = reweight_study._subset(train.labels, 10, rng)
  noisy = data.uniform_label_noise(train.labels[idx], 10, 0.3, 0).labels
  t = common.one_hot(noisy, 10)
  x = x[idx].astype(np.float32)
  reg = float(diva_jax.select_reg(t, features=x).reg)
  w = curation.reweight(np.ones(len(t), np.float32), t, features=x, reg=reg, steps=1,
                        learning_rate=0.2).weights
  err = lambda w: 100 * common.test_error(np.asarray(w, np.float32), t, x, reg, xt, test.labels)
  row = rules["mse/x1/norm0.2/1"]
  assert row["test_error_before"] == pytest.approx(err(np.ones(len(t))), abs=1e-9)
  assert row["change"] == pytest.approx(err(w) - err(np.ones(len(t))), abs=1e-6)
  assert row["mean_abs_weight_change"] == pytest.approx(np.mean(np.abs(w - 1)), rel=1e-5)
  # The validation choice reports the chosen rule's change (0 for 'none').
  sel = rules["selected by validation"]
  assert sel["change"] == (0.0 if sel["chosen"] == "none" else rules[sel["chosen"]]["change"])
  with open(tmp_path / "summary.csv") as f:
    cells = {r["rule"]: r for r in csv.DictReader(f)}
  assert float(cells["mse/x1/norm0.2/1"]["change_mean"]) == pytest.approx(row["change"])
  assert cells["mse/x1/norm0.2/1"]["default"] in ("1", "True")
  with open(tmp_path / "results.json") as f:
    assert len(json.load(f)) == 5
  assert "| digits:pixels:10:0 | 30% | mse/x1/norm0.2/1 (default) |" in (
      tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("key,value,match", [
    ("settings", ("digits:pixels:10",), "dataset:backbone:per_class:max_train"),
    ("settings", ("digits:resnet:10:0",), "dataset:backbone:per_class:max_train"),
    ("noise_rates", (1.0,), "noise_rates"),
    ("losses", ("ce",), "ce@T"),
    ("step_rules", ("adam0.1",), "step_rules"),
    ("steps", (0,), "steps must list integers >= 1"),
    ("default_rule", "mse/x1/norm9/1", "default_rule"),
])
def test_reweight_study_bad_config(tmp_path, key, value, match):
  c = _config("runlocal")
  c[key] = value
  with pytest.raises(ConfigError, match=match):
    reweight_study.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_row_space_projection_is_exact():
  """Fewer samples than feature columns: the projected problem has the same LOO loss,
  derivative and test predictions (the study's speed-up changes no number)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 50))
  t = np.eye(3)[rng.integers(0, 3, 20)]
  test = common.FeatureSet(rng.normal(size=(7, 50)), np.zeros(7, int), None, ())
  xp, testp = reweight_study._row_space(x, test)
  assert xp.shape == (20, 20) and testp.features.shape == (7, 20)
  w = rng.uniform(0.5, 1.5, 20)
  for a, b in ((x, xp),):
    va, da = diva_jax.loo_loss_and_derivative(w, t, features=a, reg=0.7)
    vb, db = diva_jax.loo_loss_and_derivative(w, t, features=b.astype(np.float64), reg=0.7)
    np.testing.assert_allclose(vb, va, rtol=1e-5)
    np.testing.assert_allclose(db, da, rtol=1e-4, atol=1e-7)
  pa = diva_jax.ridge_predict(w, t, features=x, reg=0.7, test_features=test.features)
  pb = diva_jax.ridge_predict(w, t, features=xp.astype(np.float64), reg=0.7,
                              test_features=testp.features.astype(np.float64))
  np.testing.assert_allclose(pb, pa, rtol=1e-4, atol=1e-6)
