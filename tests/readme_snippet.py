"""Runs the README's quickstart (its first ```python block) as a user pastes it.

`python tests/readme_snippet.py` in a core-only install is what `.ci/run` checks: the snippet
needs no extra. tests/test_install.py runs it with every extra's modules blocked.
"""
import pathlib
import re


def quickstart() -> tuple[str, str]:
  """(the first ```python block of README.md, the ```text block right after it: its output)."""
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  m = re.search(r"```python\n(.*?)```\s*\n+```text\n(.*?)```", readme, re.S)
  if m is None:
    raise SystemExit("README.md: no ```python block followed by its ```text output")
  return m.group(1), m.group(2)


if __name__ == "__main__":
  exec(compile(quickstart()[0], "README.md (quickstart)", "exec"), {"__name__": "__main__"})  # pylint: disable=exec-used
