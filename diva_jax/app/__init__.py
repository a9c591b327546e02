"""The application layer: `curate` (the `diva-curate` command for a user's own data) and
what it shares with the experiment binaries in the repository's `experiments/`: flags and
one-line errors (`cli`), the workdir with resumable stages (`workdir`), config checks and
variants, plots and the HTML report, and the run-side helpers (`common`). Unlike the
functional core, these do I/O: they read datasets, cache features, write results atomically
into a workdir and resume after an interruption.

They need the ``experiments`` extra (``pip install 'diva_jax[experiments]'``)."""

from diva_jax import _optional

_optional.require_all(
    ("absl", "ml_collections", "tensorflow_datasets", "sklearn", "PIL", "cleanlab",
     "matplotlib"), "diva_jax.app (diva-curate and the experiment binaries)")
