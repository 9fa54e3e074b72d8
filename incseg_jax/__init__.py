"""incseg_jax."""

from incseg_jax import allocator as _allocator

# First thing on import, before numpy, TensorFlow and XLA start threads (the module docstring says why).
try:
  _allocator.configure()
except ValueError as e:  # a bad INCSEG_JAX_MALLOC: its message, not a traceback through the import machinery
  raise SystemExit(f"error: {e}") from None
