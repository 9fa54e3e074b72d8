"""incseg_jax."""
