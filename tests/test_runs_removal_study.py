"""The removal study runs end to end (tiny: digits pixels) and its numbers agree with the
curation functions and oracles it reports on."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

import diva_jax
from diva_jax.app import common
from experiments.studies import removal_study
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*variants):
  spec = importlib.util.spec_from_file_location(
      "_removal_config", os.path.join(REPO, "configs", "removal_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(",".join(variants))
  c.settings, c.seeds, c.image_size = ("digits:400",), 1, 8
  return c


def test_removal_study_tiny(tmp_path):
  c = _config("runlocal")
  out = removal_study.run(c, str(tmp_path))
  (row,) = out["runs"]
  assert set(row["detectors"]) == set(c.detectors)
  for name, v in row["detectors"].items():
    assert v["gap"] == pytest.approx(v["test_error"] - row["test_error_oracle"]), name
    assert 0 <= v["f1"] <= 1 and 0 <= v["test_error"] <= 100
  # The default detector, recomputed here from the public functions.
  train, test = common.prepare_features(
      removal_study._setting_config(c, "digits", 400),
      common.Workdir(str(tmp_path / "check"), c))
  cfg = removal_study._setting_config(c, "digits", 400)
  noisy, flipped = common.noisy_labels(cfg, train.labels, len(train.class_names))
  t = common.one_hot(noisy, len(train.class_names))
  reg = float(diva_jax.select_reg(t, features=train.features, loss="ce", temperature=0.3).reg)
  ones = np.ones(len(noisy), np.float32)
  d = np.asarray(diva_jax.dataset_derivative(ones, t, features=train.features, reg=10 * reg,
                                             loss="ce", temperature=0.3, outer="weighted"))
  k = diva_jax.estimate_num_issues(common.softmax(np.asarray(diva_jax.loo_predictions(
      ones, t, features=train.features, reg=reg)), 0.3), noisy)
  flags = diva_jax.detect_detrimental(d, num_flagged=k)
  default = row["detectors"]["derivative"]
  assert row["estimated"] == k and default["removed"] == int(flags.sum())
  assert default["f1"] == pytest.approx(diva_jax.detection_metrics(flags - 0.5, flipped).f1)
  keep = ~flags
  r = float(diva_jax.select_reg(t[keep], features=train.features[keep], loss="ce",
                                temperature=0.3).reg)
  assert default["test_error"] == pytest.approx(100 * common.test_error(
      keep.astype(np.float32), t, train.features, r, test.features, test.labels), abs=1e-9)
  # Relabelling removes nothing; random errors have the default's count and F1; the oracle
  # count removes exactly as many as there are noisy labels.
  assert row["detectors"]["relabel"]["removed"] == row["detectors"]["soft_relabel"]["removed"] == 0
  assert row["detectors"]["random_errors"]["f1"] == pytest.approx(default["f1"])
  assert row["detectors"]["oracle_count"]["removed"] == row["noisy"] == int(flipped.sum())
  # The default's error profile: its groups partition the samples, consistently with F1.
  prof = row["default_errors"]
  assert sum(g["count"] for g in prof.values()) == row["n"]
  assert prof["noisy_kept"]["count"] + prof["noisy_removed"]["count"] == row["noisy"]
  assert prof["noisy_removed"]["count"] + prof["clean_removed"]["count"] == default["removed"]
  tp = prof["noisy_removed"]["count"]
  assert default["f1"] == pytest.approx(2 * tp / (default["removed"] + row["noisy"]))
  for g in prof.values():
    assert g["count"] == 0 or 0 <= g["clean_model_correct"] <= 1
  with open(tmp_path / "error_profile.csv") as f:
    assert len(list(csv.DictReader(f))) == 4
  with open(tmp_path / "summary.csv") as f:
    cells = {r["detector"]: r for r in csv.DictReader(f)}
  assert float(cells["derivative"]["gap_mean"]) == pytest.approx(default["gap"])
  # A rerun loads the seed's stage: the same results, nothing recomputed.
  again = removal_study.run(c, str(tmp_path))
  assert again["runs"] == json.loads((tmp_path / "results.json").read_text())


def test_confident_joint_rows_hand_example():
  # 3 classes; thresholds t = mean p_j over samples labelled j.
  p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1],   # labelled 0: t0 = 0.7
                [0.1, 0.7, 0.2], [0.7, 0.2, 0.1],   # labelled 1: t1 = 0.45
                [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])  # labelled 2: t2 = 0.7
  y = np.array([0, 0, 1, 1, 2, 2])
  # Sample 1 (label 0): above no threshold -> uncounted; row 0 = [1, 0, 0] scaled to 2.
  # Sample 3 (label 1): p0 = 0.7 >= 0.7 -> (1, 0); sample 2 -> (1, 1); row 1 = [1, 1, 0].
  # Sample 5 (label 2): above none -> uncounted; row 2 = [0, 0, 1] scaled to 2.
  np.testing.assert_array_equal(diva_jax.curation.detect.confident_joint(p, y),
                                [[2, 0, 0], [1, 1, 0], [0, 0, 2]])
  np.testing.assert_array_equal(removal_study.confident_joint_rows(p, y, 3), [0, 1, 0])
  with pytest.raises(ValueError, match=r"labels must be \[n\] = \(6,\) integers in \[0, 3\)"):
    diva_jax.curation.detect.confident_joint(p, y + 1)
  assert diva_jax.estimate_num_issues(p, y) == 1
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(4), 300)
  labels = rng.integers(0, 4, 300)
  rows = removal_study.confident_joint_rows(probs, labels, 4)
  assert abs(rows.sum() - diva_jax.estimate_num_issues(probs, labels)) <= 2  # rounding


def test_removal_study_bad_config(tmp_path):
  for key, value, match in (("detectors", ("derivative", "magic"), "detectors"),
                            ("detectors", (), "detectors"),
                            ("ensemble_multipliers", (10.0,), "ensemble_multipliers"),
                            ("rbf_bandwidth", 0.0, "rbf_bandwidth"),
                            ("noise_rate", 1.0, "noise_rate"),
                            ("rbf_max_n", 100, "rbf_max_n = 100")):
    c = _config("runlocal")
    c[key] = value
    with pytest.raises(ConfigError, match=match):
      removal_study.run(c, str(tmp_path / key))
    assert not (tmp_path / key).exists(), key
