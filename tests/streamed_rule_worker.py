"""Worker for tests/test_streamed_rule_multiprocess.py: one of P processes on loopback.

Usage: python streamed_rule_worker.py PROCESS_ID NUM_PROCESSES PORT FEATURES.npy LABELS.npy
       BLOCK REG_ROWS OUT_PREFIX

Each process runs the streamed default rule with distributed=True on the same .npy (reading
only its share of the rows) and writes what it returned to OUT_PREFIX<PROCESS_ID>.npz.
Importing this module has no side effects; JAX is configured only when it runs as a script.
"""
import sys

import numpy as np


def main(argv):
  # pylint: disable=g-import-not-at-top  (JAX only after the arguments are read)
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  pid, nproc, port = int(argv[1]), int(argv[2]), int(argv[3])
  features, labels, block, reg_rows, out = argv[4], argv[5], int(argv[6]), int(argv[7]), argv[8]
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid, initialization_timeout=60)
  import diva_jax
  from diva_jax.curation import streamed_rule
  y = np.load(labels)
  reads = []
  src = streamed_rule.as_block_source(features)
  read = src.read
  src.read = lambda a, b: (reads.append((a, b)), read(a, b))[1]
  r = diva_jax.find_label_issues(y, features=src, block_size=block, reg_rows=reg_rows,
                                 distributed=True, return_probs=True)
  np.savez(f"{out}{pid}.npz", flagged=r.flagged, derivative=r.derivative,
           probs=r.loo_probs, num_issues=r.num_issues, reg=r.reg,
           detection_reg=r.detection_reg, loo_loss=r.loo_loss, suggested=r.suggested_labels,
           reads=np.asarray(reads))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
