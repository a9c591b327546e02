"""The tree's rules: the library never imports the runs, modules stay small, and the product
command installs from a wheel and runs outside the checkout."""
import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 450
# Over the cap today, each to be split (issue 30; named here so that no other module grows).
OVER_CAP: set = set()


def _modules(*tops):
  for top in tops:
    yield from sorted((ROOT / top).rglob("*.py"))


def _imported(path):
  tree = ast.parse(path.read_text(), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module


def test_the_library_never_imports_the_runs_or_their_configs():
  bad = [(str(p.relative_to(ROOT)), m) for p in _modules("diva_jax") for m in _imported(p)
         if m.split(".")[0] in ("experiments", "configs")]
  assert not bad, bad


def test_no_module_computes_a_path_from_its_file_to_another_folder():
  # The binaries pass their config module's __file__; nothing climbs out with dirname(__file__).
  bad = [str(p.relative_to(ROOT)) for p in _modules("diva_jax", "experiments", "configs")
         if "dirname(os.path.dirname(os.path.abspath(__file__" in p.read_text()]
  assert not bad, bad


def test_modules_stay_under_the_line_cap():
  sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
           for p in _modules("diva_jax", "experiments", "configs")}
  over = {k: v for k, v in sizes.items() if v > MAX_LINES and k not in OVER_CAP}
  assert not over, over
  # The known exceptions still exist and are still over (else drop them from OVER_CAP).
  assert all(sizes.get(k, 0) > MAX_LINES for k in OVER_CAP), {k: sizes.get(k) for k in OVER_CAP}


@pytest.mark.slow
def test_the_wheel_installs_and_diva_curate_runs_outside_the_checkout(tmp_path):
  """Builds a wheel, installs it (non-editable, no deps) into a fresh venv that sees this
  environment's dependencies only (a .pth to their site-packages, not the checkout), then runs
  `diva-curate` on an .npz from a directory outside the checkout."""
  import site
  dist = tmp_path / "dist"
  r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                      "-w", str(dist), str(ROOT)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  wheel, = dist.glob("diva_jax-*.whl")
  import zipfile
  names = zipfile.ZipFile(wheel).namelist()
  assert "diva_jax/app/curate_config.py" in names
  assert not [n for n in names if n.split("/")[0] in ("experiments", "configs")
              or n.startswith("diva_jax/runs/")], names
  assert "diva-curate = diva_jax.app.curate:main" in zipfile.ZipFile(wheel).read(
      next(n for n in names if n.endswith("entry_points.txt"))).decode()
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  py = venv / "bin" / "python"
  purelib = subprocess.run(
      [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip()
  # This environment's packages, minus the checkout (an editable install's finder or path).
  deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
  pathlib.Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
  r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                      "--no-index", str(wheel)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  work = tmp_path / "elsewhere"
  work.mkdir()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 300)
  x = rng.normal(size=(300, 8)) + 2.0 * np.eye(3, 8)[labels]
  np.savez(work / "emb.npz", features=x.astype(np.float32), labels=labels)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env["PYTHONNOUSERSITE"] = "1"
  probe = subprocess.run([str(py), "-c", textwrap.dedent("""
      import diva_jax, importlib.util
      print(diva_jax.__file__)
      print(importlib.util.find_spec("experiments"), importlib.util.find_spec("configs"))
  """)], capture_output=True, text=True, cwd=work, env=env)
  assert probe.returncode == 0, probe.stderr[-3000:]
  where, specs = probe.stdout.splitlines()
  assert str(ROOT) not in where and "site-packages" in where, where
  assert specs == "None None", specs  # the wheel ships the library alone
  exe = venv / "bin" / "diva-curate"
  r = subprocess.run([str(exe), f"--workdir={work / 'out'}", "--config.source=emb.npz"],
                     capture_output=True, text=True, cwd=work, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  for name in ("label_issues.csv", "cleaned_labels.csv", "report.html", "metrics.json",
               "config.json"):
    assert (work / "out" / name).exists(), name
  bad = subprocess.run([str(exe), f"--workdir={work / 'bad'}", "--config.source=emb.npz",
                        "--config.no_such_field=1"], capture_output=True, text=True, cwd=work,
                       env=env, timeout=300)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr[-2000:]


def _binaries():
  """(config module, run module path) of every binary that has a config."""
  out = []
  for p in sorted((ROOT / "experiments").glob("*.py")):
    text = p.read_text()
    names = [n.names[0].name for n in ast.walk(ast.parse(text))
             if isinstance(n, ast.ImportFrom) and n.module == "configs"]
    runs = [f"{n.module}.{a.name}" for n in ast.walk(ast.parse(text))
            if isinstance(n, ast.ImportFrom) and n.module and _is_run(n.module)
            for a in n.names]
    if names and runs:
      out.append((names[0], runs[0]))
    elif p.stem == "curate":
      out.append(("curate", "diva_jax.app.curate"))
  return out


def _is_run(module):
  return module.startswith(("experiments.paper", "experiments.studies",
                            "experiments.benchmarks"))


def _sources_read_by(run_module):
  """The run module's source and the sources it can reach in the runs and the app layer
  (its own package's modules, diva_jax/app, experiments/lib)."""
  path = ROOT / (run_module.replace(".", "/") + ".py")
  files = {path}
  files |= set((ROOT / "diva_jax" / "app").glob("*.py"))
  files |= set((ROOT / "experiments" / "lib").glob("*.py"))
  files |= set(path.parent.glob("*.py"))
  return "\n".join(f.read_text() for f in files)


def test_every_binary_has_a_config_and_a_run():
  found = dict(_binaries())
  for name in ("outlier_rejection", "curate", "train_with_diva", "valuation_benchmark",
               "rule_benchmark", "threshold_study"):
    assert name in found, (name, found)


@pytest.mark.parametrize("config_name, run_module", _binaries())
def test_every_config_field_is_read_by_its_run(config_name, run_module):
  """Every field of every variant appears in the run's code (a field no code names is a
  silent no-op for a user's override)."""
  import importlib
  mod = importlib.import_module(f"configs.{config_name}")
  variants = [None] + sorted(getattr(mod, "VARIANTS", {}))
  source = _sources_read_by(run_module)
  for v in variants:
    cfg = mod.get_config(v)
    unread = [k for k in cfg.keys()
              if f".{k}" not in source and f'"{k}"' not in source and f"'{k}'" not in source]
    assert not unread, (config_name, v, unread)


def test_the_fields_settings_and_noise_give_are_not_config_fields():
  """train_with_diva: `settings` and `noise` choose the datasets, sizes and noise, so no
  top-level field can be overridden to no effect (an unknown override is a one-line error)."""
  from configs import train_with_diva
  cfg = train_with_diva.get_config()
  for k in ("dataset", "max_train", "noise_type", "noise_rate", "linearize"):
    assert k not in cfg, k


def test_no_module_shares_a_name_with_a_public_function_of_its_package():
  """`from pkg import name` must mean one thing: a star import of a function called like a
  submodule would shadow the submodule (the old `diva_jax.ntk.jacobian_features`)."""
  import importlib
  import inspect
  clashes = []
  for init in sorted((ROOT / "diva_jax").rglob("__init__.py")):
    pkg = ".".join(init.parent.relative_to(ROOT).parts)
    mod = importlib.import_module(pkg)
    subs = {p.stem for p in init.parent.glob("*.py")} | {
        p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()}
    for name in getattr(mod, "__all__", ()):
      if name in subs and inspect.isfunction(getattr(mod, name, None)):
        clashes.append(f"{pkg}.{name}")
  for name in getattr(importlib.import_module("diva_jax"), "__all__", ()):
    if (ROOT / "diva_jax" / f"{name}.py").exists():
      clashes.append(f"diva_jax.{name}")
  assert not clashes, clashes


def test_top_level_names_come_from_the_modules_that_own_them():
  """`diva_jax/__init__.py` imports each name from the module that defines it, not from a
  module that re-exports it."""
  import importlib
  tree = ast.parse((ROOT / "diva_jax" / "__init__.py").read_text())
  wrong = []
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diva_jax"):
      mod = importlib.import_module(node.module)
      for a in node.names:
        obj = getattr(mod, a.name)
        owner = getattr(obj, "__module__", None)
        if owner is not None and owner != node.module and not isinstance(obj, (tuple, str)):
          wrong.append(f"{a.name}: from {node.module}, defined in {owner}")
  assert not wrong, wrong
