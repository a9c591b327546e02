"""Experiment runs: importable, tested `run(config, workdir)` functions behind the binaries
in `experiments/`. Unlike the functional core, these do I/O: they read datasets, cache
features, write results atomically into a workdir and resume after an interruption.

They need the ``experiments`` extra (``pip install 'diva_jax[experiments]'``)."""

from diva_jax import _optional

_optional.require_all(
    ("absl", "ml_collections", "tensorflow_datasets", "sklearn", "PIL", "cleanlab",
     "matplotlib"), "diva_jax.runs (the experiment binaries)")
