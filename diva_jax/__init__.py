"""diva_jax: the dataset derivative of a learning task (DIVA, Dukler et al., ICLR 2022)."""
