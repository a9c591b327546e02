r"""The dataset derivative among the data-valuation methods (the valuation table in docs/).

  python -m experiments.valuation_benchmark --workdir=/tmp/diva/valuation

Measured (55 min on 2 cores with a fresh peer venv, features cached; docs/studies.md): the
default rule's 2-means F1 0.890-0.938 on the image sets against at most 0.828 for a peer; it
loses on breast_cancer at 10% noise (0.398 against Data-OOB's 0.776), where loo_removal does not
(0.820).

Every method values the same noisy training samples; one protocol scores them (2-means F1,
point removal / addition curves with a ridge head). The peers (pyDVL, valda) run in a venv
of their own that the binary creates on first use with experiments/peers/setup_venv.sh
(peer_venv, default ~/.cache/diva_jax/peer_venv). `:runlocal`: digits pixels and the wine
table, our methods and cleanlab only, 2 seeds, about 20 seconds. `:scaling`: the time each
method needs as n grows (MNIST-5k features), for the largest n each values in 10 minutes.
"""

import ml_collections

from diva_jax.app.variants import apply_variants


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("mnist5k:0", "animal_mnist:3000", "digits:0", "breast_cancer:0", "wine:0")
  c.noise_rates = (0.1, 0.2)
  c.seeds = 3
  c.methods = ("diva_default", "diva_plain", "loo_removal", "cleanlab_knn_shapley",
               "pydvl_knn_shapley", "pydvl_data_oob", "pydvl_mc_shapley", "valda_tmc",
               "valda_beta", "random")
  c.downstreams = ("ridge",)      # + "logistic" (scikit-learn) up to logistic_max_n samples
  c.logistic_max_n = 2000
  c.removal_fractions = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
  c.addition_fractions = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
  c.knn = 10                      # the KNN-Shapley methods' k (cleanlab's default)
  c.slow_peer_max_n = 1000        # the Monte-Carlo peers run where n <= this (0 = always)
  c.peer_time_budget_s = 20.0     # each Monte-Carlo peer's wall-time budget per valuation
  c.peer_venv = ""
  c.scaling_sizes = ()            # with :scaling, the n of each timing
  c.scaling_budget_s = 600.0
  c.data_dir = ""
  c.cache_dir = ""
  c.backbone = "efficientnet_lite0"
  c.image_size = 96
  c.batch_size = 64
  c.seed = 0                     # the first seed: seeds seed .. seed + seeds - 1
  return apply_variants(c, arg, VARIANTS)


def _runlocal(c):
  c.settings, c.seeds, c.backbone = ("digits:600", "wine:0"), 2, "pixels"
  c.methods = ("diva_default", "diva_plain", "loo_removal", "cleanlab_knn_shapley", "random")
  c.downstreams = ("ridge", "logistic")


def _peers_smoke(c):
  """Also the peers, with a 5-second budget (needs their venv: first use creates it)."""
  c.methods = tuple(c.methods) + ("pydvl_knn_shapley", "pydvl_data_oob", "pydvl_mc_shapley")
  c.peer_time_budget_s = 5.0


def _scaling(c):
  """Time per method as n grows (MNIST-5k features, 20% noise); the largest n in
  scaling_budget_s by a power law through the last two times. The Monte-Carlo peers are left
  out: their time is their budget."""
  c.settings, c.seeds, c.noise_rates = ("mnist5k:0",), 1, (0.2,)
  c.scaling_sizes = (1000, 2000, 4000)
  c.methods = ("diva_default", "diva_plain", "loo_removal", "cleanlab_knn_shapley",
               "pydvl_knn_shapley", "pydvl_data_oob")


VARIANTS = {"runlocal": _runlocal, "peers": _peers_smoke, "scaling": _scaling}
