"""diva_jax: the dataset derivative of a learning task (DIVA, Dukler et al., ICLR 2022).

The functional core: exact closed-form leave-one-out (LOO) of weighted ridge regression on
features or a kernel, and its gradient in the sample weights (the dataset derivative).
"""

from diva_jax.loo.backends.dispatch import BACKENDS
from diva_jax.loo.closed_form import LOSSES
from diva_jax.loo.closed_form import reference_loo_loss
from diva_jax.loo.api import dataset_derivative
from diva_jax.loo.api import loo_loss
from diva_jax.loo.api import loo_loss_and_derivative
from diva_jax.loo.api import loo_predictions
from diva_jax.loo.reg import RegSelection
from diva_jax.loo.reg import select_reg
from diva_jax.loo.results import LooResult
from diva_jax.loo.streaming.driver import streamed_loo_loss_and_derivative
from diva_jax.loo.heldout import ridge_predict
from diva_jax.loo.heldout import validation_derivative
from diva_jax.loo.heldout import validation_loss
from diva_jax.loo.heldout import validation_loss_and_derivative

from diva_jax.curation.detect import DetectionMetrics
from diva_jax.curation.steps import ExtendResult
from diva_jax.curation.steps import GroupReweightResult
from diva_jax.curation.steps import ReweightResult
from diva_jax.curation.detect import auroc
from diva_jax.curation.detect import detect_detrimental
from diva_jax.curation.detect import detection_metrics
from diva_jax.curation.detect import DetectionRegChoice
from diva_jax.curation.detect import choose_detection_reg
from diva_jax.curation.detect import confident_joint
from diva_jax.curation.detect import estimate_num_issues
from diva_jax.curation.steps import extend
from diva_jax.curation.steps import group_derivative
from diva_jax.curation.steps import reweight
from diva_jax.curation.steps import reweight_groups
from diva_jax.curation.steps import tune_augmentations

from diva_jax.curation.label_issues import LabelIssues
from diva_jax.curation.label_issues import find_label_issues
from diva_jax.curation.label_issues import refit_test_error
from diva_jax.curation.valuation import curve_auc
from diva_jax.curation.valuation import loo_removal_effect
from diva_jax.curation.valuation import noisy_detection_f1
from diva_jax.curation.valuation import point_curve
from diva_jax.curation.valuation import two_means_split

from diva_jax.kernels import median_sq_distance
from diva_jax.kernels import rbf_kernel
from diva_jax.kernels import squared_distances
from diva_jax.linearization import linearize
from diva_jax._tree_utils import parameter_paths
from diva_jax._tree_utils import path_excludes
from diva_jax._tree_utils import path_matches
from diva_jax.ntk.api import empirical_ntk_fn
from diva_jax.ntk.feature_maps import jacobian_features
from diva_jax.ntk.feature_maps import projected_jacobian_features
from diva_jax.parallel.sharding import data_mesh
from diva_jax.parallel.sharding import shard_rows
from diva_jax.parallel.sharding import sharded_gram

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "LOSSES", "LooResult", "RegSelection", "DetectionMetrics", "ExtendResult",
    "GroupReweightResult", "ReweightResult", "DetectionRegChoice", "LabelIssues",
    "find_label_issues", "refit_test_error",
    "loo_removal_effect", "two_means_split", "noisy_detection_f1", "point_curve", "curve_auc",
    "loo_predictions", "loo_loss", "loo_loss_and_derivative", "dataset_derivative",
    "reference_loo_loss", "streamed_loo_loss_and_derivative", "select_reg", "ridge_predict",
    "validation_loss", "validation_derivative", "validation_loss_and_derivative",
    "auroc", "detect_detrimental", "detection_metrics", "estimate_num_issues",
    "choose_detection_reg", "confident_joint",
    "rbf_kernel", "median_sq_distance", "squared_distances",
    "extend", "group_derivative",
    "reweight", "reweight_groups", "tune_augmentations",
    "linearize", "parameter_paths", "path_excludes", "path_matches",
    "empirical_ntk_fn", "jacobian_features", "projected_jacobian_features",
    "data_mesh", "shard_rows", "sharded_gram",
]
