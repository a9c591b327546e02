"""The extension / multi-source study runs end to end (tiny: digits pixels, one seed)."""

import importlib.util
import json
import os

import pytest

from experiments.studies import extension_study
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*variants):
  spec = importlib.util.spec_from_file_location(
      "_extension_config", os.path.join(REPO, "configs", "extension_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(",".join(variants))


def test_extension_study_tiny(tmp_path):
  c = _config("runlocal")
  c.seeds, c.extension_variants = 1, ("core/fixed", "core+picks/reselect")
  c.core_size, c.pool_size, c.budgets, c.k = 30, 200, (20, 40), 20
  c.shots, c.source_size, c.source_budget = 3, 100, 40
  out = extension_study.run(c, str(tmp_path))
  (ext,), (src,) = out["extension"], out["sources"]
  for v in c.extension_variants:
    r = ext["variants"][v]
    assert 0 <= r["loo_stop_size"] <= r["num_selected"] <= 40
    assert all(0 <= e <= 100 for e in r["curve"].values() if e is not None)
  # 40 of 200 pool images: the picks' mislabelled share is a fraction.
  assert 0 <= ext["variants"]["core/fixed"]["picked_noisy"][40] <= 1
  assert sum(src["diva_pick_per_source"].values()) == src["diva_pick_size"] <= 40
  assert set(src["source_derivative"]) == {"clean", "noisy", "shuffled"}
  # The clean source helps the core's LOO loss: its group derivative is negative.
  assert src["source_derivative"]["clean"] < 0 and "clean" in src["diva_sources"]
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["sources"][0]["diva_sources"] == src["diva_sources"]
  md = (tmp_path / "summary.md").read_text()
  assert "| core + all sources |" in md and "DIVA Extend, LOO on core+picks, reg reselect" in md


def test_extension_study_bad_config(tmp_path):
  c = _config("runlocal")
  c.extension_variants = ("pool/fixed",)
  with pytest.raises(ConfigError, match="extension_variants"):
    extension_study.run(c, str(tmp_path / "a"))
  c = _config("runlocal")
  c.budgets = (10, 10_000)
  with pytest.raises(ConfigError, match="budgets must be at most pool_size"):
    extension_study.run(c, str(tmp_path / "b"))
  c = _config("runlocal")
  c.pool_size = 5000
  with pytest.raises(ConfigError, match="train images"):
    extension_study.run(c, str(tmp_path / "c"))
  assert not any((tmp_path / d).exists() for d in "abc")
