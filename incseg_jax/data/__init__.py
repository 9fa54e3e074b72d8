"""Datasets, task splitting and input pipelines for incseg_jax."""
