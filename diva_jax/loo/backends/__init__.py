"""Where the primal and dual forms run: `dispatch` (auto / host / xla), `host` (SciPy's BLAS
and LAPACK on NumPy arrays, the fast CPU path), `xla` (jnp, under jit, on any device)."""
