"""Every device of every host: `sharding` (a data mesh, row-sharded arrays, sharded Gram
products), `multihost` (jax.distributed start-up, collectives, the derivative on a
row-sharded array)."""
