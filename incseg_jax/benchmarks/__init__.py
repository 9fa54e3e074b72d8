"""Benchmarks, each runnable as `python -m incseg_jax.benchmarks.<name>`."""
