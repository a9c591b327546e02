"""Experiment runs: importable, tested `run(config, workdir)` functions behind the binaries
in `experiments/`. Unlike the functional core, these do I/O: they read datasets, cache
features, write results atomically into a workdir and resume after an interruption."""
