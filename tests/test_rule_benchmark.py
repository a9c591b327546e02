"""The scale benchmark of the default rule (experiments/benchmarks/rule_benchmark.py): the
streamed and in-memory rules agree on its file, the synthetic file is what it says, resume,
bad configs refused before anything is written."""

import importlib.util
import os

import numpy as np
import pytest

from experiments.benchmarks import rule_benchmark as rb
from diva_jax.app.common import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(variant="runlocal", **kw):
  spec = importlib.util.spec_from_file_location(
      "rule_config", os.path.join(REPO, "configs", "rule_benchmark.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  for k, v in kw.items():
    c[k] = v
  return c


def test_synthetic_file_is_standardised_and_flipped(tmp_path):
  path = str(tmp_path / "x.npy")
  labels, flips = rb.write_synthetic(path, 5000, 6, 4, 0.5, 0.2, 0, block=777)
  x = np.load(path)
  assert x.shape == (5000, 7) and x.dtype == np.float32
  np.testing.assert_allclose(x[:, -1], 1.0)
  np.testing.assert_allclose(x[:, :-1].std(0) * np.sqrt(6), 1.0, atol=0.1)
  assert 0.17 < flips.mean() < 0.23 and labels.max() == 3
  assert not os.path.exists(path + ".tmp")


def test_streamed_and_in_memory_agree_and_a_run_resumes(tmp_path, capsys):
  c = _config(sizes=("3000:5",), dim=16, contenders=("gram", "streamed_rule",
                                                      "in_memory_rule", "cleanlab_sgd"))
  wd = str(tmp_path / "run")
  rows = rb.run(c, wd)
  by = {r["contender"]: r for r in rows}
  assert "error" not in str(rows)
  assert by["streamed_rule"]["f1"] == pytest.approx(by["in_memory_rule"]["f1"])
  assert by["streamed_rule"]["flagged"] == by["in_memory_rule"]["flagged"]
  assert by["streamed_rule"]["auroc"] == pytest.approx(by["in_memory_rule"]["auroc"], abs=1e-6)
  assert by["streamed_rule"]["auroc"] > 0.75 and by["cleanlab_sgd"]["auroc"] > 0.6
  assert by["streamed_rule"]["over_gram"] > 0
  assert "streamed_rule" in capsys.readouterr().out
  assert rb.run(c, wd) == rows  # from the stages


@pytest.mark.parametrize("kw, match", [
    (dict(sizes=()), "sizes must list"),
    (dict(sizes=("1000x10",)), "'n:c'"),
    (dict(contenders=("magic",)), "contenders must be"),
    (dict(noise_rate=1.0), "noise_rate"),
    (dict(dim=0), "dim"),
])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, kw, match):
  wd = tmp_path / "run"
  with pytest.raises(ConfigError, match=match):
    rb.run(_config(**kw), str(wd))
  assert not wd.exists()
