"""Worker for tests/test_multiprocess.py: one of P processes on loopback.

Usage: python multiprocess_gram_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process owns 2 fake CPU devices and its contiguous share of the rows of a
deterministic (seeded) float64 problem; together they form one global
``data`` mesh and compute the sharded Gram products ``Z^T A Z``, ``Z^T A Y``
with gloo all-reduces. Process 0 writes the result to OUT.npz.

Importing this module has no side effects (the test imports it for
``problem()``): the environment and JAX are configured only when it runs as a
script, before JAX is first imported.
"""
import os
import sys

import numpy as np

N, D, C = 24, 5, 3


def problem():
  """The global problem, identical in every process (and in the test)."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(N, D))
  a = rng.uniform(0.0, 2.0, size=N)
  y = rng.normal(size=(N, C))
  return z, a, y


def main(argv):
  # pylint: disable=g-import-not-at-top  (JAX only after the environment is set)
  import jax
  from diva_jax.parallel import sharding

  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  pid, nproc, port, out = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=nproc, process_id=pid,
                             initialization_timeout=60)

  assert jax.process_count() == nproc, jax.process_count()
  mesh = sharding.data_mesh()
  assert mesh.devices.size == 2 * nproc, mesh.devices
  z, a, y = problem()
  rows = slice(pid * N // nproc, (pid + 1) * N // nproc)  # this host's data
  zs = sharding.shard_rows(z[rows], mesh)
  as_ = sharding.shard_rows(a[rows], mesh)
  ys = sharding.shard_rows(y[rows], mesh)
  assert zs.shape == (N, D) and not zs.is_fully_addressable
  g, b = sharding.sharded_gram(as_, ys, features=zs, mesh=mesh)
  g, b = np.asarray(g.addressable_data(0)), np.asarray(b.addressable_data(0))
  if pid == 0:
    np.savez(out, g=g, b=b, devices=mesh.devices.size)
  jax.distributed.shutdown()


if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_ENABLE_X64"] = "1"
  main(sys.argv)
