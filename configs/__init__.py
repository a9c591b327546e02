"""Configs of the experiment binaries (`experiments/`), in ml_collections' config-file format.

Each `get_config(arg)` takes a comma-separated list of variants, applied in order, so they
combine: `--config=configs/outlier_rejection.py:runlocal,pixels`. Each binary imports its
config module and passes that module's file as the default `--config`.
"""
