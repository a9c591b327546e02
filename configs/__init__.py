"""Configs of the experiment binaries (`experiments/`), in ml_collections' config-file format.

Each `get_config(arg)` takes a comma-separated list of variants, applied in order, so they
combine: `--config=configs/outlier_rejection.py:runlocal,pixels`. The binaries find these files
by path (computed from their own `__file__`), from any working directory.
"""
