"""Incremental classifier: one 1x1 conv head per task step.

This module owns the growing part of the network. Step `k`'s classifier is
step `k-1`'s plus one more head, so old heads keep their param paths
(`head_0` .. `head_{k-1}`) and can be copied verbatim from the teacher
(see `incseg_jax.models.grow_variables`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class IncrementalClassifier(nn.Module):
  """Concatenation of per-step 1x1 conv heads, in step order.

  Attributes:
    classes_per_step: number of classes each step adds; step 0 includes the
      background class.
    dtype: computation dtype.
  """

  classes_per_step: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """Maps (B, h, w, C) pre-logits to (B, h, w, sum(classes_per_step))."""
    if not self.classes_per_step or min(self.classes_per_step) < 1:
      raise ValueError('classes_per_step must be non-empty positive ints, got '
                       f'{self.classes_per_step}')
    # Separate convs (not one wide conv) so every step's weights live under
    # their own stable name and adding a head never touches the old ones.
    heads = [nn.Conv(n, (1, 1), use_bias=True, dtype=self.dtype,
                     name=f'head_{k}')(x)
             for k, n in enumerate(self.classes_per_step)]
    return jnp.concatenate(heads, axis=-1)
