"""Test-wide JAX set-up.

Runs before JAX initialises in each pytest process (xdist workers included):
* 8 fake CPU devices, so sharding tests run in the default suite;
* float64 enabled, so oracles can be float64; float32 tests cast explicitly.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_enable_x64", True)
