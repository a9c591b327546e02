"""Jobs of several processes on loopback (jax.distributed, gloo) for the tests: a free port,
each process's distributed flags, and waiting for all of them (no test here)."""
import socket
import subprocess

import pytest


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def distributed_flags(port: int, num_processes: int, process_id: int) -> list:
  """The binaries' flags that make process `process_id` one of `num_processes`."""
  return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
          f"--process_id={process_id}"]


def wait(procs, timeout: float, tail: int = 5000) -> list:
  """Each process's output; fails the test if one runs past `timeout` s (all are killed)
  or exits with an error (its last `tail` characters shown)."""
  logs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      logs.append(out)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.communicate()
    pytest.fail(f"the run did not finish in {timeout} s")
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} failed:\n{log[-tail:]}"
    assert p.poll() is not None  # no leftover process
  return logs
