"""A table (CSV or Parquet) as a curation source: column types, missing values, bad label
columns (one-line errors, nothing written), and curate on a real table with planted flips."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from diva_jax.data import user_tables
from diva_jax.app.errors import ConfigError
from diva_jax.app import curate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _curate_config(**kw):
  spec = importlib.util.spec_from_file_location("curate_config_tables",
                                                os.path.join(REPO, "configs", "curate.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _write(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def test_numeric_bool_and_categorical_columns_are_encoded_and_standardised(tmp_path):
  rows = [[f"r{i}", i * 1.5, i % 2 == 0, ["red", "blue", "green"][i % 3], "ab"[i % 2]]
          for i in range(12)]
  path = _write(tmp_path / "t.csv", ["rid", "x", "flag", "colour", "label"], rows)
  t = user_tables.load_table(path, label_column="label", id_column="rid")
  assert t.columns == ["x", "flag", "colour=blue", "colour=green", "colour=red"]
  assert t.features.shape == (12, 6) and t.features.dtype == np.float32
  d = 5
  raw = np.array([[i * 1.5, i % 2 == 0] + [["red", "blue", "green"][i % 3] == v
                                          for v in ("blue", "green", "red")]
                  for i in range(12)], np.float64)
  want = (raw - raw.mean(0)) / raw.std(0) / np.sqrt(d)
  np.testing.assert_allclose(t.features[:, :5], want, rtol=1e-5, atol=1e-6)
  assert np.all(t.features[:, 5] == 1)
  assert t.class_names == ["a", "b"] and t.labels.tolist() == [i % 2 for i in range(12)]
  assert t.ids[:2] == ["r0", "r1"] and t.records[1] == "x=1.5; flag=False; colour=blue"


def test_numeric_labels_sort_as_numbers_and_parquet_reads_the_same(tmp_path):
  pd = pytest.importorskip("pandas")
  df = pd.DataFrame({"f": np.arange(9.0), "y": [2, 10, 1] * 3})
  df.to_csv(tmp_path / "t.csv", index=False)
  df.to_parquet(tmp_path / "t.parquet")
  a = user_tables.load_table(str(tmp_path / "t.csv"), label_column="y")
  b = user_tables.load_table(str(tmp_path / "t.parquet"), label_column="y")
  assert a.class_names == ["1", "2", "10"] == b.class_names
  np.testing.assert_array_equal(a.features, b.features)
  np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("rows,kw,message", [
    ([[1.0, "a"], ["", "b"], [3.0, "a"], [4.0, ""]], {"label_column": "y"},
     r"missing values: 2 rows: \[1, 3\] in 2 columns: \['y', 'x'\]"),
    ([[1.0, "a"], [2.0, "b"], [3.0, "a"]], {"label_column": "label"},
     r"label_column 'label' is not a column; 2 columns: \['x', 'y'\]"),
    ([[1.0, "a"], [2.0, "a"], [3.0, "a"]], {"label_column": "y"}, "holds 1 class"),
    ([[1.0, "a"], [2.0, "b"], [3.0, "a"]], {"label_column": "y", "id_column": "rid"},
     "id_column 'rid' is not a column"),
])
def test_bad_tables_are_refused_with_the_rows_and_columns_named(tmp_path, rows, kw, message):
  path = _write(tmp_path / "t.csv", ["x", "y"], rows)
  with pytest.raises(ValueError, match=message):
    user_tables.load_table(path, **kw)


@pytest.mark.parametrize("kw,message", [
    ({"label_column": "nope"}, "label_column 'nope' is not a column"),
    ({"source_suffix": ".parquet"}, "is a Parquet table: name its label column"),
    ({"label_column": "y", "source_suffix": ".npz"}, "is not a .csv or .parquet table"),
    ({"label_column": "y", "outer": "self"}, "outer"),
])
def test_curate_refuses_a_bad_table_config_in_one_line_and_writes_nothing(tmp_path, kw,
                                                                          message):
  suffix = kw.pop("source_suffix", ".csv")
  path = _write(tmp_path / "t.csv", ["x", "y"], [[i, "ab"[i % 2]] for i in range(8)])
  if suffix != ".csv":
    os.rename(path, path[:-4] + suffix)
    path = path[:-4] + suffix
  wd = tmp_path / "run"
  with pytest.raises(ConfigError, match=message) as e:
    curate.run(_curate_config(source=path, **kw), str(wd))
  assert "\n" not in str(e.value)
  assert not wd.exists()


def test_curate_finds_planted_flips_in_a_real_table(tmp_path):
  from sklearn.datasets import load_breast_cancer
  x, y = load_breast_cancer(return_X_y=True)
  rng = np.random.default_rng(7)
  flipped = np.zeros(len(y), bool)
  flipped[rng.choice(len(y), 57, replace=False)] = True
  noisy = np.where(flipped, 1 - y, y)
  names = np.array(["malignant", "benign"])
  header = [f"f{j}" for j in range(x.shape[1])] + ["site", "diagnosis", "patient"]
  rows = [list(x[i]) + [["north", "south"][i % 2], names[noisy[i]], f"p{i}"]
          for i in range(len(y))]
  path = _write(tmp_path / "cancer.csv", header, rows)
  wd = str(tmp_path / "run")
  metrics = curate.run(_curate_config(source=path, label_column="diagnosis",
                                      id_column="patient"), wd)
  with open(os.path.join(wd, "label_issues.csv"), newline="") as f:
    flagged = {r["id"] for r in csv.DictReader(f) if r["flagged"] in ("True", "true", "1")}
  planted = {f"p{i}" for i in np.flatnonzero(flipped)}
  f1 = 2 * len(flagged & planted) / (len(flagged) + len(planted))
  assert f1 > 0.75, (f1, len(flagged))
  stored = json.load(open(os.path.join(wd, "metrics.json")))
  assert stored["samples"] == metrics["samples"] == len(y)
  assert stored["feature_dim"] == x.shape[1] + 2 + 1  # 30 numeric, site one-hot, bias
  html = open(os.path.join(wd, "report.html")).read()
  assert 'class="record">f0=' in html and "site=" in html
  # The paper's derivative (outer='mean') is one config field away and changes the scores.
  paper = curate.run(_curate_config(source=path, label_column="diagnosis",
                                    id_column="patient", outer="mean"), str(tmp_path / "paper"))
  with open(os.path.join(tmp_path / "paper", "label_issues.csv"), newline="") as f:
    derivs = {r["id"]: float(r["derivative"]) for r in csv.DictReader(f)}
  with open(os.path.join(wd, "label_issues.csv"), newline="") as f:
    assert any(abs(float(r["derivative"]) - derivs[r["id"]]) > 1e-6 for r in csv.DictReader(f))
  assert paper["samples"] == len(y)
