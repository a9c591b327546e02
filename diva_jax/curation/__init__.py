"""What the dataset derivative is used for: `label_issues` (`find_label_issues`, the default
rule in one call, and `refit_test_error`), `detect` (the automatic threshold, detection
metrics, the choice of the detection reg), `steps` (reweighting, dataset extension, group
weights, augmentation tuning), `valuation` (the exact LOO removal effect and the
data-valuation protocol's metrics), `training` (DIVA in a training loop), `checks` (their
boundary validation)."""

from diva_jax.curation.detect import DetectionRegChoice
from diva_jax.curation.detect import choose_detection_reg
from diva_jax.curation.detect import confident_joint
from diva_jax.curation.detect import estimate_num_issues
from diva_jax.curation.label_issues import LabelIssues
from diva_jax.curation.label_issues import find_label_issues
from diva_jax.curation.label_issues import refit_test_error
from diva_jax.curation.steps import *  # noqa: F401,F403  (steps' __all__)
from diva_jax.curation.steps import __all__ as _steps_all

__all__ = ["DetectionRegChoice", "LabelIssues", "choose_detection_reg", "confident_joint",
           "estimate_num_issues", "find_label_issues", "refit_test_error", *_steps_all]
