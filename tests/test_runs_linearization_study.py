"""The linearisation study runs end to end (tiny: digits, a tiny conv backbone, one seed) and
its table agrees with its runs."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax import models
from experiments.studies import linearization_study
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*variants):
  spec = importlib.util.spec_from_file_location(
      "_linearization_config", os.path.join(REPO, "configs", "linearization_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(",".join(variants))


class _Tiny(nn.Module):  # EfficientNet-Lite0 would compile for a minute here

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, name="stem_conv")(x))
    x = nn.relu(nn.Conv(6, (1, 1), name="head_conv")(x))
    return jnp.mean(x, axis=(1, 2))


@pytest.mark.filterwarnings("ignore:select_reg")  # tiny features: reg at the grid's edge
def test_linearization_study_tiny(tmp_path):
  module = _Tiny()
  backbone = models.from_flax(module, module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3))),
                              name="tiny", input_size=(12, 12))
  c = _config("runlocal")
  c.max_train, c.max_test, c.jacobian_width = 150, 60, 8
  c.linearizations = ("last_layer", "head=^params/head_conv/")
  c.noise_rates = (0.0, 0.2)
  out = linearization_study.run(c, str(tmp_path), backbone=backbone)
  assert len(out["runs"]) == 4
  by = {(r["linearization"], r["noise_rate"]): r for r in out["runs"]}
  assert by[("last_layer", 0.0)]["feature_dim"] == 6 + 1       # features + bias column
  assert by[("head", 0.0)]["feature_dim"] == 6 + 1 + 8          # + the projected Jacobian
  noisy = by[("head", 0.2)]
  assert noisy["noisy"] == 30 and 0 <= noisy["detection_f1"] <= 1
  assert 0.5 < noisy["detection_auroc"] <= 1
  assert by[("head", 0.0)]["detection_f1"] is None               # nothing to detect when clean
  costs = {(k["block"]): k for k in out["feature_costs"]}
  assert costs["head"]["dim"] == 8 and costs["head"]["seconds"] > 0
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  (cell,) = [s for s in metrics["summary"]
             if s["linearization"] == "head" and s["noise_rate"] == 0.2]
  assert cell["detection_f1_mean"] == pytest.approx(noisy["detection_f1"])
  table = (tmp_path / "table.md").read_text()
  assert table.count("\n") == 2 + 4 and "| digits | 20% | head | 15 |" in table
  # A rerun loads every stage and reports the same numbers (the cost included).
  again = linearization_study.run(c, str(tmp_path), backbone=backbone)
  assert again["runs"] == json.loads(json.dumps(out["runs"]))


def test_linearization_study_bad_config(tmp_path):
  c = _config("runlocal")
  c.linearizations = ("last_layer", "head")
  with pytest.raises(ConfigError, match="name=regex"):
    linearization_study.run(c, str(tmp_path / "a"))
  c = _config("runlocal")
  c.noise_rates = (1.0,)
  with pytest.raises(ConfigError, match="noise_rates"):
    linearization_study.run(c, str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
