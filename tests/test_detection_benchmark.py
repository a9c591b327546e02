"""The detection benchmark across kinds of data (experiments/benchmarks/detection_benchmark.py):
its `:runlocal`, the default rule's own-sample term on a binary table, resume, bad configs."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import diva_jax
from experiments.benchmarks import detection_benchmark as db
from diva_jax.app.common import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(variant="runlocal", **kw):
  spec = importlib.util.spec_from_file_location(
      "detection_config", os.path.join(REPO, "configs", "detection_benchmark.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  for k, v in kw.items():
    c[k] = v
  return c


def test_own_sample_term_ranks_binary_table_mislabels_where_the_paper_derivative_fails(
    tmp_path, capsys):
  """breast_cancer at 10% uniform noise: the paper's derivative ranks near chance (the
  mislabels of a binary task support each other), the default rule does not."""
  c = _config(datasets=("breast_cancer",), noise=("uniform:0.1",), seeds=2,
              methods=("diva_default", "diva_plain", "cleanlab_cv_logistic"))
  wd = str(tmp_path / "run")
  rows = db.run(c, wd)
  cells = {r["method"]: r for r in db.summarize(rows)}
  assert cells["diva_default"]["auroc"] > 0.95
  assert cells["diva_plain"]["auroc"] < 0.8
  assert cells["diva_default"]["f1"] > cells["diva_plain"]["f1"] + 0.2
  metrics = json.load(open(os.path.join(wd, "metrics.json")))
  (target,) = metrics["targets"]
  assert target["auroc_minus_cleanlab_cv"] == pytest.approx(
      cells["diva_default"]["auroc"] - cells["cleanlab_cv_logistic"]["auroc"])
  assert "diva_default" in capsys.readouterr().out
  stages = sorted(os.listdir(os.path.join(wd, "stages")))
  mtimes = [os.path.getmtime(os.path.join(wd, "stages", s)) for s in stages]
  assert db.run(c, wd) == rows  # resumed from the stages, same numbers
  assert [os.path.getmtime(os.path.join(wd, "stages", s)) for s in stages] == mtimes


def test_find_label_issues_outer_is_one_argument_away():
  x, y, c = db.load_table("wine")
  default = diva_jax.find_label_issues(y, features=x)
  paper = diva_jax.find_label_issues(y, features=x, outer="mean")
  t = np.eye(c, dtype=x.dtype)[y]
  ones = np.ones(len(y), x.dtype)
  for r, outer in ((default, "weighted"), (paper, "mean")):
    _, deriv = diva_jax.loo_loss_and_derivative(ones, t, features=x, reg=r.detection_reg,
                                                loss="ce", temperature=0.3, outer=outer)
    np.testing.assert_allclose(r.derivative, np.asarray(deriv, np.float64), rtol=1e-6,
                               atol=1e-9)
  with pytest.raises(ValueError, match="outer must be one of"):
    diva_jax.find_label_issues(y, features=x, outer="self")


def test_tabular_features_standardise_on_train_rows_with_a_bias_column():
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, size=(50, 4))
  x[:, 2] = 7.0  # a constant column stays finite
  tr, te = db.tabular_features(x[:40], x[40:])
  assert tr.shape == (40, 5) and te.shape == (10, 5) and tr.dtype == np.float32
  np.testing.assert_allclose(tr[:, :4].mean(0), 0, atol=1e-6)
  np.testing.assert_allclose(tr[:, [0, 1, 3]].std(0), 0.5, rtol=1e-5)  # 1 / sqrt(4)
  assert np.all(tr[:, 4] == 1) and np.all(np.isfinite(te))


@pytest.mark.parametrize("change,message", [
    ({"datasets": ("titanic",)}, "unknown dataset 'titanic'"),
    ({"noise": ("uniform:1.5",)}, "noise entries must be"),
    ({"noise": ("flip:0.2",)}, "noise entries must be"),
    ({"methods": ("diva_default", "magic")}, "methods must be a non-empty subset"),
    ({"seeds": 0}, "seeds"),
])
def test_bad_config_refused_before_anything_is_written(tmp_path, change, message):
  wd = tmp_path / "run"
  with pytest.raises(ConfigError, match=message):
    db.run(_config(**change), str(wd))
  assert not wd.exists()


def test_binary_runlocal(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.detection_benchmark",
       "--config=configs/detection_benchmark.py:runlocal", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "digits_parity" in out.stdout and "cleanlab_cv_logistic" in out.stdout
  for f in ("config.json", "metrics.json", "summary.csv", "results.json"):
    assert (tmp_path / "run" / f).exists()
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.detection_benchmark",
       "--config=configs/detection_benchmark.py:runlocal", "--config.seeds=0",
       f"--workdir={tmp_path / 'bad'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "seeds" in bad.stderr.strip().splitlines()[-1]


def test_frame_tables_go_through_the_curate_table_reader():
  """penguins (categorical island and sex one-hot, rows with a missing cell dropped), and the
  binary fair and anes96 surveys: the 60% split, standardised like a curate table source."""
  pd = pytest.importorskip("pandas")
  pytest.importorskip("palmerpenguins")
  pytest.importorskip("statsmodels")
  shapes = {}
  for name in db.FRAME_TABLES:
    x, y, c = db.load_table(name)
    df, label = db._frame(name)
    assert x.dtype == np.float32 and x.shape[0] == len(y) == int(round(0.6 * len(df)))
    assert c == df[label].nunique() and set(np.unique(y)) == set(range(c))
    np.testing.assert_allclose(x[:, -1], 1.0)  # the bias column
    np.testing.assert_allclose(x[:, :-1].mean(0), 0.0, atol=1e-5)
    shapes[name] = (x.shape[1], c)
  # penguins: 4 measurements + island (3) + sex (2) + bias; the surveys are binary.
  assert shapes["penguins"] == (10, 3)
  assert shapes["fair"][1] == shapes["anes96"][1] == 2
  assert not pd.isna(db._frame("penguins")[0]).values.any()
