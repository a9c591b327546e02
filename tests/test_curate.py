"""Curate your own dataset, end to end: real images (scikit-learn's digits) written as a class
folder tree, as a CSV of path,label rows and as a .npz of precomputed features, with planted
label noise; the run flags the planted errors from each, with the same ranking."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import diva_jax
from diva_jax.app import curate
from diva_jax.app.config_checks import ConfigMismatchError
from diva_jax.app.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config_module():
  """configs/curate.py by path (configs/ is not an installed package; no sys.path change)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "_curate_config", os.path.join(REPO, "configs", "curate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


curate_config = _load_config_module()
N, SIZE = 400, 16
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """(root, csv path, npz path, ids, noisy mask): N digits, 20% of labels flipped."""
  from sklearn.datasets import load_digits
  root = tmp_path_factory.mktemp("photos")
  d = load_digits()
  rng = np.random.default_rng(0)
  idx = rng.permutation(len(d.target))[:N]
  labels = d.target[idx].copy()
  noisy = rng.uniform(size=N) < 0.2
  labels[noisy] = (labels[noisy] + rng.integers(1, 10, noisy.sum())) % 10
  ids, rows = [], []
  for k, (i, lab) in enumerate(zip(idx, labels)):
    img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8))
    mode = ("L", "RGB", "RGBA")[k % 3]  # mixed modes, as real folders have
    rel = os.path.join(NAMES[lab], f"img_{k:04d}.png")
    os.makedirs(root / NAMES[lab], exist_ok=True)
    img.convert(mode).save(root / rel)
    ids.append(rel)
    rows.append((rel, NAMES[lab], rel))
  csv_path = root / "labels.csv"
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "label", "id"])
    w.writerows(rows)
  # Precomputed features of the same images (what the pixel backbone computes), as .npz.
  from diva_jax.data import user_data
  imgs = user_data.load_image_csv(str(csv_path), size=SIZE)
  feats = imgs.images.reshape(N, -1).astype(np.float32) / 255.0
  npz_path = root.parent / "embeddings.npz"
  np.savez(npz_path, features=feats, labels=np.asarray([NAMES[l] for l in labels]),
           ids=np.asarray(ids))
  return str(root), str(csv_path), str(npz_path), ids, noisy


def _config(source, **kw):
  c = curate_config.get_config("pixels")
  c.source, c.image_size = source, SIZE
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _issues(workdir):
  with open(os.path.join(workdir, "label_issues.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_flags_planted_errors_from_folder_csv_and_embeddings(planted, tmp_path):
  root, csv_path, npz_path, ids, noisy = planted
  rankings = {}
  for kind, src in (("folder", root), ("csv", csv_path), ("npz", npz_path)):
    wd = str(tmp_path / kind)
    metrics = curate.run(_config(src), wd)
    rows = _issues(wd)
    assert len(rows) == N and metrics["samples"] == N
    deriv = {r["id"]: float(r["derivative"]) for r in rows}
    score = np.asarray([deriv[i] for i in ids])
    auc = diva_jax.auroc(score, noisy)
    assert auc > 0.95, (kind, auc)
    # Most harmful first; flagged (threshold 'auto') = the first min(estimate, #positive)
    # rows, every one with derivative > 0; labels by class name.
    d = [float(r["derivative"]) for r in rows]
    assert d == sorted(d, reverse=True)
    k = min(metrics["estimated_issues"], metrics["flagged_by_sign_rule"])
    assert [r["flagged"] for r in rows] == ["1"] * k + ["0"] * (N - k)
    assert all(float(r["derivative"]) > 0 for r in rows[:k])
    # The estimate is close to the planted count (80 of 400 here).
    assert abs(metrics["estimated_issues"] - noisy.sum()) <= 0.25 * noisy.sum()
    assert {r["given_label"] for r in rows} <= set(NAMES)
    rankings[kind] = [r["id"] for r in rows]
    # cleanlab-compatible arrays, in the source's order.
    mask = np.load(os.path.join(wd, "label_issues.npy"))
    quality = np.load(os.path.join(wd, "label_quality_scores.npy"))
    assert mask.dtype == bool and mask.shape == (N,) and mask.sum() == metrics["flagged"]
    assert quality.shape == (N,) and np.all((quality >= 0) & (quality <= 1))
    # Cleaned labels: the flagged samples removed.
    with open(os.path.join(wd, "cleaned_labels.csv"), newline="") as f:
      cleaned = list(csv.DictReader(f))
    assert len(cleaned) == N - metrics["flagged"]
    assert os.path.getsize(os.path.join(wd, "report.html")) > 1000
    with open(os.path.join(wd, "metrics.json")) as f:
      json.load(f)
  assert rankings["folder"] == rankings["csv"] == rankings["npz"]


def test_relabel_suggests_the_true_class_for_most_flagged(planted, tmp_path):
  root, csv_path, _, ids, noisy = planted
  wd = str(tmp_path / "relabel")
  curate.run(_config(csv_path, relabel=True), wd)
  with open(os.path.join(wd, "cleaned_labels.csv"), newline="") as f:
    cleaned = {r["id"]: r["label"] for r in csv.DictReader(f)}
  assert len(cleaned) == N
  rows = {r["id"]: r for r in _issues(wd)}
  flagged_noisy = [i for i, n in zip(ids, noisy) if n and rows[i]["flagged"] == "1"]
  assert len(flagged_noisy) > 0.6 * noisy.sum()
  # A relabelled sample takes the suggestion, which differs from the (wrong) given label.
  changed = [i for i in flagged_noisy if cleaned[i] != rows[i]["given_label"]]
  assert len(changed) > 0.6 * len(flagged_noisy)


def test_relabel_rerun_in_the_same_workdir_reuses_the_scores(planted, tmp_path, monkeypatch):
  """relabel changes only the outputs: a rerun in the same workdir is accepted without
  --overwrite and does not score again."""
  _, csv_path, _, _, _ = planted
  wd = str(tmp_path / "w")
  curate.run(_config(csv_path), wd)
  with open(os.path.join(wd, "cleaned_labels.csv"), newline="") as f:
    dropped = list(csv.DictReader(f))
  def boom(*a, **k):
    raise AssertionError("scored again")
  monkeypatch.setattr(curate.label_issues, "find_label_issues", boom)
  curate.run(_config(csv_path, relabel=True), wd)
  with open(os.path.join(wd, "cleaned_labels.csv"), newline="") as f:
    relabelled = list(csv.DictReader(f))
  assert len(relabelled) == N > len(dropped)
  assert json.load(open(os.path.join(wd, "config.json")))["relabel"] is True
  # A change of what is scored still needs --overwrite.
  with pytest.raises(ConfigMismatchError, match="temperature"):
    curate.run(_config(csv_path, temperature=0.5), wd)


def test_bad_sources_refused_before_anything_is_written(planted, tmp_path):
  root, csv_path, _, _, _ = planted
  bad_csv = tmp_path / "bad.csv"
  bad_csv.write_text("path,label\nzero/missing.png,zero\none/also_missing.png,one\n")
  cases = [
      (_config(""), "source must name"),
      (_config(str(bad_csv)), "missing"),
      (_config(root, detection_reg_multiplier=-1.0), "detection_reg_multiplier"),
      (_config(root, report_grid=0), "report_grid"),
      (_config(str(tmp_path / "no" / "such_foldr")), "no such file or folder"),
      (_config(str(tmp_path / "missing.csv")), "no such file or folder"),
  ]
  for config, match in cases:
    wd = tmp_path / f"wd_{abs(hash(match))}"
    with pytest.raises(ConfigError, match=match):
      curate.run(config, str(wd))
    assert not wd.exists()


def test_binary_runs_from_another_directory(planted, tmp_path):
  _, csv_path, _, _, _ = planted
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.curate", f"--workdir={tmp_path / 'cli'}",
       f"--config.source={csv_path}", "--config.backbone=pixels", f"--config.image_size={SIZE}"],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "most harmful" in out.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.curate", f"--workdir={tmp_path / 'cli2'}",
       f"--config.source={tmp_path / 'nope.csv'}"],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  last = [line for line in bad.stderr.splitlines() if line.strip()][-1]
  assert bad.returncode == 2 and last.startswith("error:") and "nope.csv" in last, bad.stderr
  assert "Traceback" not in bad.stderr


TINY_MODEL = '''
import flax.linen as nn
import jax.numpy as jnp


class TinyNet(nn.Module):
  """A user's own embedding network: conv + dense on the preprocessed image."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(64)(x)
'''


def test_user_flax_backbone_restored_with_orbax(planted, tmp_path):
  import jax
  import orbax.checkpoint as ocp
  _, csv_path, _, _, _ = planted
  model_file = tmp_path / "tiny_model.py"
  model_file.write_text(TINY_MODEL)
  ns = {}
  exec(TINY_MODEL, ns)  # pylint: disable=exec-used
  variables = ns["TinyNet"]().init(jax.random.key(0), jax.numpy.zeros((1, SIZE, SIZE, 3)))
  ckpt = tmp_path / "ckpt"
  ocp.PyTreeCheckpointer().save(str(ckpt), variables)
  wd = str(tmp_path / "flax")
  metrics = curate.run(_config(csv_path, backbone="flax",
                               flax_module=f"{model_file}:TinyNet",
                               flax_checkpoint=str(ckpt)), wd)
  assert metrics["feature_dim"] == 65 and metrics["samples"] == N  # 64 + bias
  with pytest.raises(ConfigError, match="flax_checkpoint"):
    curate.run(_config(csv_path, backbone="flax", flax_module=f"{model_file}:TinyNet",
                       flax_checkpoint=str(tmp_path / "nope")), str(tmp_path / "flax2"))


def test_tfds_name_source(tmp_path):
  """A TFDS name (here the digits builder that ships with diva_jax) works as a source."""
  wd = str(tmp_path / "tfds")
  metrics = curate.run(_config("digits", max_images=300, image_size=8), wd)
  assert metrics["samples"] == 300 and metrics["classes"] == 10
  rows = _issues(wd)
  assert len(rows) == 300 and rows[0]["path"] == ""


def test_rerun_after_fixing_labels_recomputes_the_scores(planted, tmp_path):
  """Same config and workdir, labels fixed in the CSV in place: the scores stage is keyed by
  the data too, so the rerun scores the new labels instead of reusing the old scores."""
  root, csv_path, _, _, _ = planted
  src = tmp_path / "labels.csv"
  with open(csv_path, newline="") as f:
    rows = list(csv.reader(f))
  rows = [rows[0]] + [[os.path.join(root, r[0]), r[1], r[2]] for r in rows[1:]]
  with open(src, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  wd = str(tmp_path / "rerun")
  curate.run(_config(str(src)), wd)
  before = {r["id"]: r for r in _issues(wd)}
  worst = max(before.values(), key=lambda r: float(r["derivative"]))
  for r in rows[1:]:  # accept the suggestion for the most harmful sample
    if r[2] == worst["id"]:
      r[1] = worst["suggested_label"]
  with open(src, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  curate.run(_config(str(src)), wd)
  after = {r["id"]: r for r in _issues(wd)}
  assert after[worst["id"]]["given_label"] == worst["suggested_label"]
  assert float(after[worst["id"]]["derivative"]) < float(worst["derivative"])
  stages = os.listdir(os.path.join(wd, "stages"))
  assert len([s for s in stages if s.startswith("scores-")]) == 2


def test_export_image_folder_then_curate(tmp_path):
  """The README's recipe on a shipped dataset: export it as a class folder with planted
  noise, curate it, score against the planted list."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "_export", os.path.join(REPO, "experiments", "export_image_folder.py"))
  export = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(export)
  out = str(tmp_path / "digits_folder")
  res = export.export("digits", out, 0.2, 0)
  assert res["images"] == 1797 and len(res["flipped"]) > 0
  with open(out + ".planted_noise.json") as f:
    assert json.load(f)["flipped"] == res["flipped"]
  with pytest.raises(ValueError, match="exists"):
    export.export("digits", out, 0.2, 0)
  wd = str(tmp_path / "wd")
  metrics = curate.run(_config(out, image_size=8), wd)
  assert metrics["samples"] == 1797 and metrics["skipped_files"] == 0
  planted = set(res["flipped"])
  rows = _issues(wd)
  score = np.asarray([float(r["derivative"]) for r in rows])
  truth = np.asarray([r["path"] in planted for r in rows])
  flags = np.asarray([r["flagged"] == "1" for r in rows])
  assert diva_jax.auroc(score, truth) > 0.95
  # curate read the planted list beside the folder and scored itself the same way.
  assert metrics["planted_file"] == out + ".planted_noise.json"
  assert metrics["planted_planted"] == len(planted) and metrics["planted_unmatched"] == 0
  assert metrics["planted_auroc"] == pytest.approx(diva_jax.auroc(score, truth), abs=1e-4)
  f1 = 2 * np.sum(flags & truth) / (flags.sum() + truth.sum())
  assert metrics["planted_f1"] == pytest.approx(f1, abs=1e-4)
  with open(os.path.join(wd, "report.html")) as f:
    assert "F1 of the flags against the planted errors" in f.read()


def test_planted_list_given_explicitly_and_refused_when_bad(planted, tmp_path):
  root, csv_path, npz_path, ids, noisy = planted
  listed = tmp_path / "planted.json"
  listed.write_text(json.dumps({"flipped": [i for i, m in zip(ids, noisy) if m] + ["nope"]}))
  metrics = curate.run(_config(npz_path, planted=str(listed)), str(tmp_path / "wd"))
  assert metrics["planted_planted"] == int(noisy.sum()) and metrics["planted_unmatched"] == 1
  assert any("1 of the listed samples are not in the source" in w for w in metrics["warnings"])
  bad = tmp_path / "bad.json"
  bad.write_text("[1, 2]")
  with pytest.raises(ConfigError, match="a 'flipped' list"):
    curate.run(_config(npz_path, planted=str(bad)), str(tmp_path / "wd2"))
  assert not (tmp_path / "wd2").exists()  # refused before anything is written
  with pytest.raises(ConfigError, match="no such file"):
    curate.run(_config(npz_path, planted=str(tmp_path / "none.json")), str(tmp_path / "wd3"))
  assert not (tmp_path / "wd3").exists()


def _npz(path, x, y):
  np.savez(path, features=x.astype(np.float32), labels=y)
  return str(path)


def test_features_without_signal_are_said_and_nothing_is_removed(tmp_path, capfd):
  """Random embeddings: a warning in the console, metrics.json, the report and LabelIssues;
  cleaned_labels.csv keeps every sample."""
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 500)
  src = _npz(tmp_path / "rand.npz", rng.normal(size=(500, 64)), y)
  wd = str(tmp_path / "wd")
  metrics = curate.run(_config(src), wd)
  assert metrics["flagged"] > 0
  assert any("carry little signal" in w for w in metrics["warnings"]), metrics["warnings"]
  assert "warning: the features carry little signal" in capfd.readouterr().err
  with open(os.path.join(wd, "cleaned_labels.csv")) as f:
    assert len(f.read().strip().splitlines()) == 1 + 500
  with open(os.path.join(wd, "report.html")) as f:
    html = f.read()
  assert html.index("carry little signal") < html.index("<h2>Summary</h2>")  # at the top
  with pytest.warns(RuntimeWarning, match="carry little signal"):
    r = diva_jax.find_label_issues(y, features=rng.normal(size=(500, 64)))
  assert any("carry little signal" in w for w in r.warnings)


def test_a_class_the_features_do_not_separate_is_said_and_kept(tmp_path):
  """One class's features replaced by other classes' (plus noise): named in a warning, and
  cleaned_labels.csv keeps it with its given labels (no class silently removed)."""
  rng = np.random.default_rng(1)
  y = rng.integers(0, 5, 500)
  x = rng.normal(size=(500, 64)) + 3 * np.eye(5, 64)[y]
  zero, other = np.flatnonzero(y == 0), np.flatnonzero(y != 0)
  x[zero] = x[rng.choice(other, zero.size)] + 0.3 * rng.normal(size=(zero.size, 64))
  wd = str(tmp_path / "wd")
  metrics = curate.run(_config(_npz(tmp_path / "e.npz", x, y)), wd)
  assert any(w.startswith("class '0': the features do not separate it")
             for w in metrics["warnings"]), metrics["warnings"]
  assert metrics["classes_kept_whole"] == ["0"]
  with open(os.path.join(wd, "cleaned_labels.csv")) as f:
    kept = [r["label"] for r in csv.DictReader(f)]
  assert kept.count("0") == zero.size
  # the other classes are cleaned as usual
  assert len(kept) < 500
  check = diva_jax.curation.detect.signal_check(
      y, diva_jax.find_label_issues(y, features=x).suggested_labels,
      np.zeros(500, bool), 5)
  assert not check.no_signal and check.unseparated == (0,)
  # Informative features: no warning at all.
  clean = rng.normal(size=(500, 64)) + 3 * np.eye(5, 64)[y]
  assert diva_jax.find_label_issues(y, features=clean).warnings == ()
