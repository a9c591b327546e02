"""Data valuation: the exact LOO removal effect against brute-force refits (float64), the
protocol's metrics on cases computed by hand, and the benchmark binary's smoke run."""

import json
import os

import numpy as np
import pytest

from diva_jax.curation import valuation


def _ridge(z, y, a, reg, zq):
  w = np.linalg.solve(z.T @ (a[:, None] * z) + reg * np.eye(z.shape[1]),
                      z.T @ (a[:, None] * y))
  return zq @ w


def _loss(f, y, kind, temp):
  if kind == "mse":
    return float(np.sum((f - y) ** 2))
  s = f / temp
  s = s - s.max()
  return float(-np.sum(y * (s - np.log(np.exp(s).sum()))))


def _brute_removal(z, y, a, reg, kind, temp, mask):
  """L(a with a_j = 0, mask without j) - L(a), every LOO prediction a refit from scratch."""
  n = len(y)

  def mean_loo(aa, m):
    out = []
    for i in np.flatnonzero(m):
      b = aa.copy()
      b[i] = 0.0
      out.append(_loss(_ridge(z, y, b, reg, z[i]), y[i], kind, temp))
    return np.mean(out)

  base = mean_loo(a, mask)
  res = []
  for j in range(n):
    b, m = a.copy(), mask.copy()
    b[j], m[j] = 0.0, False
    res.append(mean_loo(b, m) - base)
  return np.asarray(res)


@pytest.mark.parametrize("n,d", [(12, 4), (9, 20)])   # d < n (primal) and d > n (interpolating)
@pytest.mark.parametrize("kind", ["mse", "ce"])
def test_loo_removal_effect_matches_refits(n, d, kind):
  rng = np.random.default_rng(n + d)
  z = rng.normal(size=(n, d))
  y = np.eye(3)[rng.integers(0, 3, n)]
  a = rng.uniform(0.3, 2.0, n)
  a[2] = 0.0                       # a sample already removed: its effect is 0 on the fit
  mask = np.ones(n, bool)
  mask[5] = False                  # a sample the LOO loss does not average over
  want = _brute_removal(z, y, a, 0.7, kind, 0.5, mask)
  got = valuation.loo_removal_effect(y, features=z, reg=0.7, weights=a, loss=kind,
                                     temperature=0.5, eval_mask=mask, block_size=4)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  via_kernel = valuation.loo_removal_effect(y, kernel=z @ z.T, reg=0.7, weights=a, loss=kind,
                                            temperature=0.5, eval_mask=mask)
  np.testing.assert_allclose(via_kernel, want, rtol=1e-9, atol=1e-12)
  assert np.max(np.abs(want)) > 1e-3   # a non-trivial case


def test_loo_removal_effect_sign_on_a_mislabel():
  """Removing a planted mislabel lowers the others' LOO loss (negative effect)."""
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1], 20)
  z = np.eye(2)[labels] * 3 + rng.normal(size=(40, 2)) * 0.5
  noisy = labels.copy()
  noisy[:3] = 1
  got = valuation.loo_removal_effect(np.eye(2)[noisy], features=z, reg=1.0)
  assert np.all(got[:3] < 0) and np.median(got[3:]) > np.max(got[:3])


def test_loo_removal_effect_rejects_bad_input():
  y = np.eye(2)[[0, 1, 0, 1]]
  z = np.ones((4, 3))
  with pytest.raises(ValueError, match="exactly one of features"):
    valuation.loo_removal_effect(y, reg=1.0)
  with pytest.raises(ValueError, match="reg must be a finite number > 0"):
    valuation.loo_removal_effect(y, features=z, reg=0.0)
  with pytest.raises(ValueError, match="must have 4 rows"):
    valuation.loo_removal_effect(y, features=z[:3], reg=1.0)
  with pytest.raises(ValueError, match="weights must be >= 0"):
    valuation.loo_removal_effect(y, features=z, reg=1.0, weights=[1, -1, 1, 1])


def test_two_means_split_by_hand_and_against_kmeans():
  np.testing.assert_array_equal(valuation.two_means_split([5.0, 0.1, 0.0, 5.1, 0.2]),
                                [False, True, True, False, True])
  assert not valuation.two_means_split([1.0, 1.0, 1.0]).any()
  from sklearn.cluster import KMeans
  rng = np.random.default_rng(3)
  for _ in range(3):
    v = np.concatenate([rng.normal(0, 1, 150), rng.normal(rng.uniform(1, 4), 1, 50)])
    ours = valuation.two_means_split(v)
    sse = lambda low: sum(np.sum((g - g.mean()) ** 2) for g in (v[low], v[~low]) if g.size)
    km = KMeans(2, n_init=4, random_state=0).fit(v[:, None])
    low_km = km.labels_ == int(np.argmin(km.cluster_centers_[:, 0]))
    assert sse(ours) <= sse(low_km) + 1e-9   # the global optimum
    assert np.mean(ours == low_km) > 0.97


def test_noisy_detection_f1_by_hand():
  # Low cluster {3, 4}; noisy {2, 3}: tp 1, precision 1/2, recall 1/2.
  assert valuation.noisy_detection_f1([1.0, 1.0, 1.0, 0.0, 0.0],
                                      [False, False, True, True, False]) == pytest.approx(0.5)
  assert valuation.noisy_detection_f1([1.0, 0.0, 1.0], [True, False, False]) == 0.0


def test_point_curve_orders_and_auc_by_hand():
  values = np.array([3.0, 1.0, 2.0, 0.0])
  code = lambda keep: float(np.sum(2 ** np.flatnonzero(keep)))   # the kept set, as bits
  np.testing.assert_array_equal(valuation.point_curve(values, [0, 0.25, 0.5], code),
                                [15, 7, 5])          # remove_low drops 3, then 1
  np.testing.assert_array_equal(
      valuation.point_curve(values, [0.25, 0.5], code, curve="remove_high"), [14, 10])
  np.testing.assert_array_equal(
      valuation.point_curve(values, [0.25, 0.75], code, curve="add_high"), [1, 7])
  np.testing.assert_array_equal(
      valuation.point_curve(values, [0.25, 1.0], code, curve="add_low"), [8, 15])
  # Ties are broken at random (seeded), not by input order.
  firsts = {valuation.point_curve(np.zeros(8), [1 / 8], code, curve="add_high", seed=s)[0]
            for s in range(6)}
  assert len(firsts) > 1
  assert valuation.curve_auc([0, 0.5, 1], [1, 0, 1]) == pytest.approx(0.5)
  assert valuation.curve_auc([0.2, 0.4], [0.3, 0.5]) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="fractions must be increasing"):
    valuation.curve_auc([0.5, 0.2], [1, 1])
  with pytest.raises(ValueError, match="curve must be one of"):
    valuation.point_curve(values, [0.5], code, curve="remove_middle")
  with pytest.raises(ValueError, match=r"fractions must be a non-empty list of numbers in \[0, 1\]"):
    valuation.point_curve(values, [1.5], code)


def test_ridge_downstream_matches_the_library_refit():
  """The benchmark's fast downstream head (Gram downdates) is `refit_test_error`'s head."""
  from experiments.benchmarks import valuation_benchmark as vb
  import diva_jax
  rng = np.random.default_rng(1)
  x, xt = rng.normal(size=(60, 7)), rng.normal(size=(30, 7))
  y, yt = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
  head = vb.RidgeDownstream(x, y, 3, 2.5, xt, yt)
  for k in (5, 25, 40, 59):          # below and above half: both code paths
    keep = np.zeros(60, bool)
    keep[rng.permutation(60)[:k]] = True
    want = 1 - diva_jax.refit_test_error(keep, y, features=x, test_features=xt,
                                       test_labels=yt, reg=2.5, num_classes=3)
    assert head(keep) == pytest.approx(want)


def _config(**kw):
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                      "valuation_benchmark.py")
  spec = importlib.util.spec_from_file_location("valuation_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("runlocal")
  c.settings, c.seeds, c.noise_rates = ("digits:150", "wine:0"), 1, (0.2,)
  c.removal_fractions, c.addition_fractions = (0.0, 0.1, 0.2), (0.2, 0.6, 1.0)
  for k, v in kw.items():
    c[k] = v
  return c


def test_benchmark_runlocal_scores_and_resumes(tmp_path, capsys):
  from experiments.benchmarks import valuation_benchmark as vb
  wd = str(tmp_path / "run")
  out = vb.run(_config(), wd)
  cells = {(s["dataset"], s["method"]): s for s in out["summary"]}
  assert set(m for _, m in cells) == set(vb.OWN)
  for dataset in ("digits", "wine"):
    assert cells[(dataset, "diva_default")]["auroc_mean"] > 0.85
    assert cells[(dataset, "random")]["f1_mean"] < cells[(dataset, "diva_default")]["f1_mean"]
    assert "own_rule_f1_mean" in cells[(dataset, "diva_default")]
    assert 0 < cells[(dataset, "loo_removal")]["ridge_remove_low_auc_mean"] <= 1
    assert os.path.exists(os.path.join(wd, f"curves_{dataset}.png"))
  rows = json.load(open(os.path.join(wd, "results.json")))
  assert rows[0]["scores"]["diva_plain"]["ridge_add_high"][-1] == pytest.approx(
      rows[0]["scores"]["random"]["ridge_add_high"][-1])   # all samples kept: one model
  assert "cleanlab" in json.load(open(os.path.join(wd, "versions.json")))
  assert "2-means F1" in capsys.readouterr().out
  stages = sorted(os.listdir(os.path.join(wd, "stages")))
  mtimes = {s: os.path.getmtime(os.path.join(wd, "stages", s)) for s in stages}
  again = vb.run(_config(), wd)                  # resumes: every stage loaded, same numbers
  assert again["summary"] == out["summary"]
  assert {s: os.path.getmtime(os.path.join(wd, "stages", s)) for s in stages} == mtimes


@pytest.mark.parametrize("change,message", [
    ({"methods": ("diva_default", "shapley_magic")}, "methods must be a non-empty subset"),
    ({"removal_fractions": (0.2, 0.1)}, "removal_fractions must list at least 2 increasing"),
    ({"addition_fractions": (0.0, 0.5)}, r"addition_fractions must list .* in \(0, 1\]"),
    ({"settings": ("iris:0",)}, "iris"),
    ({"noise_rates": (0.0,)}, "noise_rates must list numbers in"),
    ({"downstreams": ("svm",)}, "downstreams must be a non-empty subset"),
    ({"scaling_sizes": (100, 50)}, "scaling_sizes must be increasing"),
])
def test_benchmark_rejects_bad_configs_before_writing(tmp_path, change, message):
  from experiments.benchmarks import valuation_benchmark as vb
  from diva_jax.app.errors import ConfigError
  wd = tmp_path / "run"
  with pytest.raises(ConfigError, match=message):
    vb.run(_config(**change), str(wd))
  assert not wd.exists()


def test_peer_runner_file_contract_without_the_peer_libraries(tmp_path):
  """run_peers.py (stdlib + numpy, libraries imported per method) run by this interpreter,
  where pyDVL and valda are absent: each method's error is recorded, nothing crashes."""
  import subprocess
  import sys
  from experiments.benchmarks import valuation_peers as vb
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "in.npz", x_train=rng.normal(size=(30, 4)), y_train=np.arange(30) % 2,
           x_val=rng.normal(size=(10, 4)), y_val=np.arange(10) % 2, k=3)
  out = tmp_path / "out.json"
  proc = subprocess.run([sys.executable, os.path.join(vb.PEER_DIR, "run_peers.py"), "--input",
                         str(tmp_path / "in.npz"), "--output", str(out), "--methods",
                         "knn_shapley,valda_tmc"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  res = json.load(open(out))
  assert res["versions"]["numpy"] == np.__version__
  for name in ("knn_shapley", "valda_tmc"):
    assert res["methods"][name]["values"] is None
    assert "No module named" in res["methods"][name]["error"]


def test_benchmark_records_a_broken_peer_venv_and_goes_on(tmp_path):
  """A peer venv whose smoke test fails (here: this venv, without pyDVL) costs the peers'
  rows, each with the reason, not the run."""
  import sys
  from experiments.benchmarks import valuation_benchmark as vb
  c = _config(settings=("wine:0",), methods=("diva_plain", "pydvl_knn_shapley"),
              peer_venv=sys.prefix)
  out = vb.run(c, str(tmp_path / "run"))
  assert {s["method"] for s in out["summary"]} == {"diva_plain"}
  assert "smoke test failed" in out["rows"][0]["errors"]["pydvl_knn_shapley"]
