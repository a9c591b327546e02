"""The threshold study runs end to end (tiny: digits pixels, one seed) and its numbers agree
with the curation functions it reports on."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from experiments.studies import threshold_study
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*variants):
  spec = importlib.util.spec_from_file_location(
      "_threshold_config", os.path.join(REPO, "configs", "threshold_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(",".join(variants))


def test_threshold_study_tiny(tmp_path):
  c = _config("runlocal")
  c.settings, c.seeds, c.noise_rates, c.image_size = ("digits:400",), 1, (0.2,), 8
  out = threshold_study.run(c, str(tmp_path))
  (row,) = out["runs"]
  assert row["n"] == 400 and row["noisy"] > 0
  # The automatic cut is capped by the sign rule and uses the estimate.
  assert row["f1_auto"] >= 0.5 and row["f1_sign"] > 0.3
  with open(tmp_path / "summary.csv") as f:
    (cell,) = list(csv.DictReader(f))
  assert float(cell["f1_auto_mean"]) == pytest.approx(row["f1_auto"])
  with open(tmp_path / "results.json") as f:
    assert json.load(f)[0]["estimated"] == row["estimated"]
  # Test errors (%) after removing the auto-flagged and exactly the noisy samples.
  for key in ("test_error_before", "test_error_auto_removal", "test_error_oracle_removal"):
    assert 0 <= row[key] <= 100
  assert row["auto_minus_oracle"] == pytest.approx(
      row["test_error_auto_removal"] - row["test_error_oracle_removal"])
  assert float(cell["auto_minus_oracle_mean"]) == pytest.approx(row["auto_minus_oracle"])
  assert "chosen_multiplier" not in row  # off by default
  # Detection only: no test split needed, no test-error columns.
  c.test_errors = False
  (row,) = threshold_study.run(c, str(tmp_path / "no_test"))["runs"]
  assert "test_error_before" not in row


@pytest.mark.parametrize("method", ["loo", "cv"])
def test_threshold_study_chosen_multiplier(tmp_path, method):
  c = _config("runlocal")
  c.settings, c.seeds, c.noise_rates, c.image_size = ("digits:300",), 1, (0.2,), 8
  c.choose_multiplier, c.multiplier_grid, c.choice_folds = method, (1.0, 100.0), 3
  (row,) = threshold_study.run(c, str(tmp_path))["runs"]
  assert row["chosen_multiplier"] in (1.0, 100.0) and len(row["choice_scores"]) == 2
  assert row["chosen_multiplier"] == (1.0, 100.0)[int(np.argmin(row["choice_scores"]))]
  assert 0 <= row["f1_chosen"] <= 1 and 0 <= row["test_error_chosen_removal"] <= 100
  assert row["chosen_minus_oracle"] == pytest.approx(
      row["test_error_chosen_removal"] - row["test_error_oracle_removal"])
  with open(tmp_path / "summary.csv") as f:
    (cell,) = list(csv.DictReader(f))
  assert float(cell["chosen_multiplier_mean"]) == row["chosen_multiplier"]


def test_threshold_study_bad_choice(tmp_path):
  for key, value, match in (("choose_multiplier", "test", "choose_multiplier"),
                            ("multiplier_grid", (1.0, 0.0), "multiplier_grid"),
                            ("multiplier_grid", (), "multiplier_grid"),
                            ("choice_folds", 1, "choice_folds"),
                            ("choice_criterion", "f1", "choice_criterion")):
    c = _config("runlocal")
    c[key] = value
    with pytest.raises(ConfigError, match=match):
      threshold_study.run(c, str(tmp_path / key))
    assert not (tmp_path / key).exists()


def test_threshold_study_bad_settings(tmp_path):
  c = _config("runlocal")
  c.settings = ("digits",)
  with pytest.raises(ConfigError, match="dataset:max_train"):
    threshold_study.run(c, str(tmp_path / "a"))
  c = _config("runlocal")
  c.noise_rates = (0.0,)
  with pytest.raises(ConfigError, match="noise_rates"):
    threshold_study.run(c, str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
