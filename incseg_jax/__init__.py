"""incseg_jax."""

from incseg_jax import allocator as _allocator

# First thing on import, before numpy, TensorFlow and XLA start threads (the module docstring says why).
_allocator.configure()
