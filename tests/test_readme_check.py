""".ci/check_readme.py (CI runs it on the real main job): it reads the README's block, ignores
only wall times, and names a number that differs."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  spec = importlib.util.spec_from_file_location("_check_readme",
                                                os.path.join(ROOT, ".ci", "check_readme.py"))
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  return m


def test_the_readme_has_the_block_it_checks():
  m = _module()
  with open(os.path.join(ROOT, "README.md")) as f:
    block, (f1, auroc) = m.readme_block(f.read())
  assert block[0].startswith("DIVA derivative: F1") and len(block) >= 5
  assert float(f1) > 0.5 and float(auroc) > 0.5


def test_only_wall_times_may_differ():
  m = _module()
  block = ["DIVA derivative: F1 0.953 (threshold auto: 835 flagged)  AUROC 0.998  in 4.43s",
           "  random                 F1 0.207  AUROC 0.506  in 0.00s",
           "test error: before 7.40% | flagged removed 6.10%"]
  same = ("noise\nDIVA derivative: F1 0.953 (threshold auto: 835 flagged)  AUROC 0.998  in 9.1s\n"
          "  random                 F1 0.207  AUROC 0.506  in 0.01s\n"
          "test error: before 7.40% | flagged removed 6.10%\n")
  assert m.check(block, same) is None
  assert "6.20%" in m.check(block, same.replace("6.10%", "6.20%"))
  assert "836 flagged" in m.check(block, same.replace("835", "836"))
  assert "no line starting 'random'" in m.check(block, same.replace("  random", "  other"))
