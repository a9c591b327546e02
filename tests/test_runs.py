"""The experiment runs end to end: runlocal variants, workdir files and metric keys, resume
after kill -9, config mismatch, bad input, sweeps."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import configs.dataset_extension
import configs.multimodal_aggregation
import configs.outlier_rejection
from diva_jax.app import common
from experiments.paper import dataset_extension
from experiments.lib import hyper
from experiments.paper import multimodal_aggregation
from experiments.paper import outlier_rejection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory):
  """One TFDS data_dir and one feature cache for every run in the session."""
  root = tmp_path_factory.mktemp("shared")
  return str(root / "tfds"), str(root / "cache")


def _local(module, shared_dirs, **overrides):
  cfg = module.get_config("runlocal")
  cfg.data_dir, cfg.cache_dir = shared_dirs
  cfg.plots = True
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_outlier_rejection_runlocal(shared_dirs, tmp_path):
  cfg = _local(configs.outlier_rejection, shared_dirs, cv_logistic=False,
               sensitivity_losses=("mse",), sensitivity_reg_multipliers=(1.0, 10.0))
  m = outlier_rejection.run(cfg, str(tmp_path))
  for k in ("detection_f1", "detection_auroc", "test_error_before", "test_error_after"):
    assert isinstance(m[k], float), k
  assert set(m["baselines"]) == {"cleanlab_exact_loo", "loo_loss_ranking", "random"}
  for b in m["baselines"].values():
    assert {"detection_f1", "detection_auroc", "seconds"} <= set(b)
  # Real features, real noise: the derivative finds the flipped labels, random does not.
  assert m["detection_auroc"] > 0.9 and m["baselines"]["random"]["detection_auroc"] < 0.6
  assert m["test_error_after"] < m["test_error_before"]
  files = set(os.listdir(tmp_path))
  assert {"config.json", "metrics.json", "per_sample.csv", "derivative_histogram.png",
          "harmful_helpful.png"} <= files
  rows = _read_csv(tmp_path / "per_sample.csv")
  assert len(rows) == 1000
  assert set(rows[0]) == {"index", "source", "label", "true_label", "noisy", "derivative",
                          "final_weight", "selected"}
  assert sum(r["noisy"] == "1" for r in rows) == m["num_noisy"] == 200
  on_disk = json.loads((tmp_path / "metrics.json").read_text())
  assert on_disk["detection_auroc"] == pytest.approx(m["detection_auroc"])
  # Rerun with the same workdir: everything resumes from the stages, same numbers.
  again = outlier_rejection.run(cfg, str(tmp_path))
  assert again["detection_f1"] == m["detection_f1"]
  assert again["test_error_after"] == m["test_error_after"]


@pytest.mark.slow
def test_dataset_extension_runlocal(shared_dirs, tmp_path):
  cfg = _local(configs.dataset_extension, shared_dirs, budgets=(20, 40, 80), k=20,
               uniform_repeats=1)
  m = dataset_extension.run(cfg, str(tmp_path))
  assert m["budgets"] == [20, 40, 80]
  assert len(m["diva"]) == len(m["uniform"]) == 3
  assert isinstance(m["full_pool"], float) and isinstance(m["core_only"], float)
  # The pool is half mislabelled; DIVA's picks are mostly clean.
  assert m["diva_picked_noisy_fraction"][-1] < 0.25
  assert {"metrics.json", "per_sample.csv", "extension_curves.png", "picked.png"} <= set(
      os.listdir(tmp_path))
  rows = _read_csv(tmp_path / "per_sample.csv")
  assert sum(r["selected"] == "1" for r in rows) == m["num_selected"] == 80


@pytest.mark.slow
def test_multimodal_aggregation_runlocal(shared_dirs, tmp_path):
  cfg = _local(configs.multimodal_aggregation, shared_dirs, max_per_modality=150,
               glyphs_per_class=10, budget=60)
  m = multimodal_aggregation.run(cfg, str(tmp_path))
  for k in ("test_error_core_only", "test_error_all_candidates", "test_error_diva"):
    assert 0.0 <= m[k] <= 1.0
  assert set(m["picked_per_modality"]) == {"sklearn_digits", "printed_digits"}
  assert sum(m["picked_per_modality"].values()) == m["num_picked"] == 60
  assert {"metrics.json", "per_sample.csv", "picked_per_modality.png"} <= set(
      os.listdir(tmp_path))


def test_multimodal_with_user_embeddings(tmp_path):
  rng = np.random.default_rng(0)
  means = rng.normal(size=(3, 6)) * 3
  def make(m, noise=1.0):
    y = rng.integers(0, 3, m)
    return means[y] + rng.normal(size=(m, 6)) * noise, y
  for name, (f, y) in {"core": make(30), "test": make(200), "text": make(60, 0.3),
                       "junk": (rng.normal(size=(60, 6)) * 3, rng.integers(0, 3, 60))}.items():
    np.savez(tmp_path / f"{name}.npz", features=f, labels=y)
  cfg = configs.multimodal_aggregation.get_config()
  cfg.core_npz, cfg.test_npz = str(tmp_path / "core.npz"), str(tmp_path / "test.npz")
  cfg.candidate_npz = (f"text={tmp_path / 'text.npz'}", f"junk={tmp_path / 'junk.npz'}")
  cfg.budget, cfg.k, cfg.plots = 30, 5, False
  m = multimodal_aggregation.run(cfg, str(tmp_path / "run"))
  # Clean prototypes are preferred over random-label junk.
  assert m["picked_per_modality"]["text"] > m["picked_per_modality"]["junk"]
  bad = cfg.copy_and_resolve_references()
  bad.candidate_npz = (str(tmp_path / "text.npz"),)
  with pytest.raises(ValueError, match="'name=path.npz'"):
    multimodal_aggregation.run(bad, str(tmp_path / "run2"))


def _pixels_config(shared_dirs):
  cfg = configs.outlier_rejection.get_config("runlocal")
  cfg.data_dir, cfg.cache_dir = shared_dirs
  cfg.backbone, cfg.dataset, cfg.max_train, cfg.max_test = "pixels", "digits", 0, 0
  cfg.cv_logistic = False
  return cfg


def test_workdir_with_a_different_config_is_refused(shared_dirs, tmp_path):
  cfg = _pixels_config(shared_dirs)
  cfg.sensitivity_reg_multipliers, cfg.plots = (), False
  outlier_rejection.run(cfg, str(tmp_path))
  other = cfg.copy_and_resolve_references()
  other.noise_rate = 0.3
  with pytest.raises(common.ConfigMismatchError,
                     match=r"noise_rate: stored 0.2, new 0.3.*--overwrite"):
    outlier_rejection.run(other, str(tmp_path))
  m = outlier_rejection.run(other, str(tmp_path), overwrite=True)
  assert m["num_noisy"] == round(0.3 * m["n_train"])


@pytest.mark.parametrize("field, value, match", [
    ("noise_rate", 1.0, r"noise_rate must be a finite number in \[0, 1\), got 1.0"),
    ("noise_rate", -0.1, r"noise_rate must be"),
    ("noise_type", "gaussian", "noise_type must be one of"),
    ("backbone", "resnet", "backbone must be one of .* got 'resnet'"),
    ("dataset", "no_such_dataset_xyz", "unknown dataset 'no_such_dataset_xyz'"),
    ("reg", -1.0, r"reg must be a finite number >= 0, got -1.0"),
    ("reg", float("nan"), r"reg must be a finite number >= 0"),
    ("reg", float("inf"), r"reg must be a finite number >= 0"),
    ("detection_reg_multiplier", -1.0, r"^detection_reg_multiplier must be .* >= 0, got -1.0"),
    ("temperature", 0.0, r"^temperature must be"),
    ("eps", float("nan"), r"^eps must be a finite number"),
    ("sensitivity_reg_multipliers", (1.0, -2.0), r"^sensitivity_reg_multipliers must be"),
    ("sensitivity_losses", ("mse", "hinge"), r"^sensitivity_losses must be one of"),
    ("max_train", -1, r"^max_train must be an integer >= 0"),
    ("view_shift", 0.5, r"^view_shift must be a finite number in \(0, 0.5\), got 0.5"),
])
def test_bad_config_values(shared_dirs, tmp_path, field, value, match):
  """Refused up front, naming the field, and nothing written (a typo must
  not lock the workdir to a bad config)."""
  cfg = _pixels_config(shared_dirs)
  setattr(cfg, field, value)
  with pytest.raises(common.ConfigError, match=match):
    outlier_rejection.run(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


def test_int_fields_must_be_integers(shared_dirs, tmp_path):
  """Integer-valued fields (here inside a tuple, which ml_collections does not
  type-check) are validated before the run starts."""
  cfg = configs.dataset_extension.get_config("digits,pixels")
  cfg.data_dir, cfg.cache_dir = shared_dirs
  for field, value, match in (("budgets", (10, 2.5), r"^budgets must be a non-empty tuple "
                                                     r"of integers >= 1, got \(10, 2.5\)"),
                              ("budgets", (), r"^budgets must be a non-empty"),
                              ("uniform_repeats", 0, r"^uniform_repeats must be an integer >= 1"),
                              ("k", True, r"^k must be an integer >= 1, got True"),
                              ("pool_noise_rate", -0.1, r"^pool_noise_rate must be a finite "
                                                        r"number in \[0, 1\)")):
    bad = cfg.copy_and_resolve_references()
    with bad.ignore_type():
      setattr(bad, field, value)
    with pytest.raises(common.ConfigError, match=match):
      dataset_extension.run(bad, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


def test_extension_budget_larger_than_pool(shared_dirs, tmp_path):
  cfg = configs.dataset_extension.get_config("pixels")
  cfg.data_dir, cfg.cache_dir = shared_dirs
  cfg.dataset, cfg.budgets = "digits", (10, 5000)
  with pytest.raises(common.ConfigError, match=r"budgets must be in \[1, pool size = 1338\]"):
    dataset_extension.run(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")  # checked after loading, before writing


def test_cli_unknown_config_key_is_refused(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.outlier_rejection", f"--workdir={tmp_path}",
       "--config=configs/outlier_rejection.py:runlocal", "--config.noise_rat=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "noise_rat" in proc.stderr
  assert not os.path.exists(tmp_path / "metrics.json")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(shared_dirs, tmp_path):
  """kill -9 in the middle of a run, restart in the same workdir: identical metrics.

  The kill must land mid-run (after the derivative stage is saved, while the
  slower baseline stage runs), and the restart must load that stage instead of recomputing
  it; both are asserted, not assumed."""
  args = ["--config=configs/outlier_rejection.py:runlocal,digits,pixels",
          "--config.max_train=0", "--config.max_test=0",
          f"--config.data_dir={shared_dirs[0]}", "--config.cv_logistic=True",
          "--config.logistic_max_iter=300", "--config.plots=False",
          "--config.sensitivity_losses=('mse',)",
          "--config.sensitivity_reg_multipliers=(1.0,)", "--verbosity=0"]  # stage log lines
  run = lambda wd: subprocess.Popen([sys.executable, "-m", "experiments.outlier_rejection",
                                     f"--workdir={wd}"] + args, cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  ref = run(tmp_path / "ref")
  _, err = ref.communicate(timeout=300)
  assert ref.returncode == 0, err.decode()[-2000:]

  wd = tmp_path / "killed"
  proc = run(wd)
  stage = wd / "stages" / "label_issues.npz"
  deadline = time.time() + 240
  while not stage.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert stage.exists(), "the run never reached its first stage"
  assert proc.poll() is None, "the run finished before it could be killed mid-run"
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (wd / "metrics.json").exists()
  assert not (wd / "stages" / "curation.npz").exists()
  stage_bytes = stage.read_bytes()

  again = run(wd)
  _, err = again.communicate(timeout=300)
  err = err.decode()
  assert again.returncode == 0, err[-2000:]
  assert "stage label_issues: loaded" in err  # resumed from the stage saved before the kill
  assert "stage curation: computed" in err
  assert stage.read_bytes() == stage_bytes
  m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
  m_new = json.loads((wd / "metrics.json").read_text())
  strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "baselines")}
  assert strip(m_new) == strip(m_ref)
  assert {k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
          for k, v in m_new["baselines"].items()} == {
              k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
              for k, v in m_ref["baselines"].items()}
  assert (wd / "per_sample.csv").read_text() == (tmp_path / "ref" / "per_sample.csv").read_text()


def test_get_hyper_expands_to_runs():
  runs = configs.outlier_rejection.get_hyper(hyper)
  assert len(runs) == 6
  assert runs[0] == {"config.noise_rate": 0.1, "config.loss": "mse"}
  with pytest.raises(ValueError, match="start with 'config.'"):
    hyper.sweep("noise_rate", [0.1])


@pytest.mark.slow
def test_sweep_runs_each_point_and_skips_finished_ones(shared_dirs, tmp_path):
  from experiments.lib import sweep
  cfg_file = tmp_path / "tiny_sweep.py"
  cfg_file.write_text(
      "import configs.outlier_rejection as base\n"
      "def get_config(arg=None):\n"
      "  c = base.get_config('runlocal')\n"
      f"  c.backbone, c.dataset, c.data_dir = 'pixels', 'digits', {shared_dirs[0]!r}\n"
      "  c.max_train, c.max_test, c.cv_logistic, c.plots = 600, 200, False, False\n"
      "  c.sensitivity_reg_multipliers = ()\n"
      "  return c\n"
      "def get_hyper(h):\n"
      "  return h.sweep('config.noise_rate', [0.1, 0.3])\n")
  cmds = sweep.commands(str(cfg_file), str(tmp_path / "sw"), binary="experiments.outlier_rejection")
  assert [c[1][-1] for c in cmds] == ["--config.noise_rate=0.1", "--config.noise_rate=0.3"]
  pod = sweep.pod_commands(str(cfg_file), str(tmp_path / "sw"), tpu_name="t", zone="z",
                           binary="experiments.outlier_rejection")
  assert len(pod) == 2 and all("--worker=all" in p and "--distributed" in p for p in pod)
  env_cwd = REPO
  res = sweep.run_local(str(cfg_file), str(tmp_path / "sw"), binary="experiments.outlier_rejection",
                        cwd=env_cwd)
  assert [r["returncode"] for r in res] == [0, 0]
  noisy = [json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())["num_noisy"]
           for r in res]
  assert noisy == [60, 180]
  mtime = os.path.getmtime(os.path.join(res[0]["workdir"], "metrics.json"))
  again = sweep.run_local(str(cfg_file), str(tmp_path / "sw"),
                          binary="experiments.outlier_rejection", cwd=env_cwd)
  assert [r["skipped"] for r in again] == [True, True]
  assert os.path.getmtime(os.path.join(res[0]["workdir"], "metrics.json")) == mtime

  # extra arguments change the config: the finished runs are not "finished" for
  # it. Without --overwrite the binary refuses the workdir (old results are not reported as
  # the new ones); with it, the runs are redone.
  argv = cmds[0][1][3:]
  assert sweep.finished(res[0]["workdir"], argv)
  assert not sweep.finished(res[0]["workdir"], argv + ["--config.max_train=300"])
  changed = sweep.run_local(str(cfg_file), str(tmp_path / "sw"),
                            binary="experiments.outlier_rejection", cwd=env_cwd,
                            extra_args=("--config.max_train=300",))
  assert [r["skipped"] for r in changed] == [False, False]
  assert all(r["returncode"] == 2 for r in changed)
  assert os.path.getmtime(os.path.join(res[0]["workdir"], "metrics.json")) == mtime
  redone = sweep.run_local(str(cfg_file), str(tmp_path / "sw"),
                           binary="experiments.outlier_rejection", cwd=env_cwd,
                           extra_args=("--config.max_train=300", "--overwrite"))
  assert [r["returncode"] for r in redone] == [0, 0]
  noisy = [json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())["num_noisy"]
           for r in redone]
  assert noisy == [30, 90]
  stored = json.loads(open(os.path.join(res[0]["workdir"], "config.json")).read())
  assert stored["max_train"] == 300


def _digits_pixels(module, shared_dirs, variants="digits,pixels", **overrides):
  cfg = module.get_config(variants)
  cfg.data_dir, cfg.cache_dir = shared_dirs
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


def _strict_json(path):
  """json.load that refuses NaN / Infinity (not JSON)."""
  def bad(c):
    raise ValueError(f"not JSON: {c}")
  with open(path) as f:
    return json.load(f, parse_constant=bad)


@pytest.mark.parametrize("max_train", [5, 20, 40])
def test_outlier_rejection_small_data_n_below_d(shared_dirs, tmp_path, max_train):
  """Tiny train sets (n < d = 65 pixel features + bias) run to the end;
  baselines that cannot run are skipped with a note; metrics.json is strict JSON."""
  cfg = _digits_pixels(configs.outlier_rejection, shared_dirs, max_train=max_train,
                       max_test=100, plots=True, sensitivity_reg_multipliers=(0.1, 1.0))
  m = outlier_rejection.run(cfg, str(tmp_path))
  assert m["n_train"] == max_train < m["feature_dim"]
  assert {"random", "loo_loss_ranking"} <= set(m["baselines"])
  for name in ("cleanlab_exact_loo", "cleanlab_cv_logistic"):
    assert (name in m["baselines"]) != (name in m["notes"])
  if max_train < 25:  # 5-fold CV needs 5 samples of every class
    assert m["notes"]["cleanlab_cv_logistic"].startswith("skipped: ")
  assert _strict_json(tmp_path / "metrics.json")["notes"] == m["notes"]


def test_outlier_rejection_everything_flagged_no_refit(shared_dirs, tmp_path):
  """With every sample flagged (eps below every derivative), no refit on the
  empty set: test_error_after is null with a note; no baseline header in the summary."""
  cfg = _digits_pixels(configs.outlier_rejection, shared_dirs, max_train=60, max_test=50,
                       baselines=False, plots=False, eps=-1e9, threshold="sign",
                       sensitivity_reg_multipliers=(1.0,))
  m = outlier_rejection.run(cfg, str(tmp_path))
  assert m["num_flagged"] == m["n_train"]
  assert m["test_error_after"] is None and "empty" in m["notes"]["test_error_after"]
  assert m["baselines"] == {}
  on_disk = _strict_json(tmp_path / "metrics.json")
  assert on_disk["test_error_after"] is None
  assert "baselines" not in outlier_rejection.summary(m)


def test_reg_is_a_float_field(shared_dirs, tmp_path):
  """Reg is a float (0.0 = choose by exact LOO), settable from the command line."""
  from experiments.lib import sweep
  for module in (configs.outlier_rejection, configs.dataset_extension,
                 configs.multimodal_aggregation):
    assert module.get_config().reg == 0.0
  path = os.path.join(REPO, "configs", "outlier_rejection.py")
  cfg = sweep.resolved_config([f"--config={path}:digits,pixels", "--config.reg=0.5"])
  assert cfg["reg"] == 0.5 and cfg["dataset"] == "digits" and cfg["backbone"] == "pixels"
  given = _digits_pixels(configs.outlier_rejection, shared_dirs, max_train=100, max_test=50,
                         baselines=False, plots=False, sensitivity_reg_multipliers=(), reg=0.5)
  m = outlier_rejection.run(given, str(tmp_path))
  assert m["reg"] == 0.5 and m["reg_chosen_by"] == "given"


def test_variants_combine_in_every_binary():
  """:digits and :pixels exist for every binary, and variants combine."""
  for module in (configs.outlier_rejection, configs.dataset_extension,
                 configs.multimodal_aggregation):
    c = module.get_config("runlocal,digits,pixels")
    assert (c.dataset, c.backbone) == ("digits", "pixels")
    assert c.image_size == 64  # runlocal
    with pytest.raises(ValueError, match="unknown variant"):
      module.get_config("runlocal,nope")


@pytest.mark.slow
def test_multimodal_pixels_real_derivatives_and_group_steps_zero(shared_dirs, tmp_path):
  """Pixels backbone (modalities of different image sizes), per_sample.csv with
  the real derivative, group_steps = 0 handled."""
  cfg = _digits_pixels(configs.multimodal_aggregation, shared_dirs, "runlocal,pixels",
                       max_per_modality=100, glyphs_per_class=5, budget=30, group_steps=0,
                       max_test=100)
  m = multimodal_aggregation.run(cfg, str(tmp_path))
  assert m["num_picked"] == 30 and m["modality_weights"] == {}
  assert "not computed" in multimodal_aggregation.summary(m)
  rows = _read_csv(tmp_path / "per_sample.csv")
  assert "noisy" not in rows[0]
  deriv = np.array([float(r["derivative"]) for r in rows])
  assert np.all(np.isfinite(deriv)) and np.count_nonzero(deriv) > len(deriv) // 2
  # Picks are the candidates the derivative favours: their first-round derivatives are
  # among the most negative ones.
  picked = np.array([r["selection_rank"] == "0" for r in rows])
  cand = np.array([r["source"] != "core" for r in rows])
  assert deriv[picked][0] <= np.median(deriv[cand])
  bad = cfg.copy_and_resolve_references()
  bad.group_steps = -1
  with pytest.raises(common.ConfigError, match="^group_steps must be an integer >= 0"):
    multimodal_aggregation.run(bad, str(tmp_path / "bad"))


def test_multimodal_candidate_labels_outside_core_classes(tmp_path):
  """A one-line ConfigError, not an IndexError deep in one_hot."""
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "core.npz", features=rng.normal(size=(20, 4)), labels=np.arange(20) % 3)
  np.savez(tmp_path / "test.npz", features=rng.normal(size=(10, 4)), labels=np.arange(10) % 3)
  np.savez(tmp_path / "cand.npz", features=rng.normal(size=(10, 4)), labels=np.arange(10) % 5)
  cfg = configs.multimodal_aggregation.get_config()
  cfg.core_npz, cfg.test_npz = str(tmp_path / "core.npz"), str(tmp_path / "test.npz")
  cfg.candidate_npz = (f"c={tmp_path / 'cand.npz'}",)
  cfg.plots = False
  with pytest.raises(common.ConfigError, match=r"candidate 'c' has labels \[3, 4\] that are "
                                               r"not classes of the core"):
    multimodal_aggregation.run(cfg, str(tmp_path / "wd"))


def test_overwrite_removes_every_stale_output_even_if_the_new_run_fails(
    shared_dirs, tmp_path, monkeypatch):
  """--overwrite leaves no metrics.json / CSV / plot of the old run beside the
  new config, also when the new run then fails."""
  cfg = _digits_pixels(configs.outlier_rejection, shared_dirs, max_train=100, max_test=50,
                       baselines=False, plots=True, sensitivity_reg_multipliers=())
  outlier_rejection.run(cfg, str(tmp_path))
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / "keep.npz").write_bytes(b"x")
  old = set(os.listdir(tmp_path))
  assert {"metrics.json", "per_sample.csv", "derivative_histogram.png", "stages"} <= old
  other = cfg.copy_and_resolve_references()
  other.noise_rate = 0.3
  def boom(*a, **k):
    raise RuntimeError("the new run fails")
  monkeypatch.setattr(common, "test_error", boom)
  with pytest.raises(RuntimeError, match="the new run fails"):
    outlier_rejection.run(other, str(tmp_path), overwrite=True)
  left = set(os.listdir(tmp_path))
  assert not left & {"metrics.json", "per_sample.csv", "derivative_histogram.png",
                     "harmful_helpful.png"}
  assert json.loads((tmp_path / "config.json").read_text())["noise_rate"] == 0.3
  assert set(os.listdir(tmp_path / "stages")) == {"label_issues.npz"}  # the new run's only
  assert (tmp_path / "cache" / "keep.npz").exists()  # validated feature cache is kept


def test_outputs_respect_the_umask(shared_dirs, tmp_path):
  """Outputs are created 0o666 & ~umask like any tool's, not mkstemp's 0o600."""
  cfg = _digits_pixels(configs.outlier_rejection, shared_dirs, max_train=60, max_test=30,
                       baselines=False, plots=True, sensitivity_reg_multipliers=())
  old = os.umask(0o022)
  try:
    outlier_rejection.run(cfg, str(tmp_path / "a"))
    os.umask(0o027)
    outlier_rejection.run(cfg, str(tmp_path / "b"))
  finally:
    os.umask(old)
  for sub, mode in (("a", 0o644), ("b", 0o640)):
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / sub) for f in fs]
    assert len(files) >= 6
    assert {f: oct(os.stat(f).st_mode & 0o777) for f in files} == {f: oct(mode) for f in files}


def test_extension_nan_free_strict_json(tmp_path):
  """Every JSON write is strict (allow_nan=False), NaN written as null."""
  from diva_jax import io_utils
  io_utils.atomic_write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")],
                                                   "c": {"d": -float("inf"), "e": 2}})
  assert _strict_json(tmp_path / "m.json") == {"a": None, "b": [1.0, None],
                                               "c": {"d": None, "e": 2}}
