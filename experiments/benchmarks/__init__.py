"""Speed against a peer in the same run: the LOO core (`benchmark`), the NTK, feature
extraction, scale-out and device benchmarks."""
