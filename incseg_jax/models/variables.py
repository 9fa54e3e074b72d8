"""Variable helpers: jitted initialisation and step-to-step head growth.

This module owns how a step-k model's variables are created from step k-1's:
init the new model freshly, then copy every shared leaf from the old one, so
only ``classifier/head_k`` keeps its fresh initialisation.
"""

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util


def init_variables(model, rng, image_size, batch: int = 1):
  """Initialises ``model`` under ``jax.jit`` on a zero image batch.

  Args:
    model: a ``SegModel`` (anything whose ``__call__(x, train)`` takes NHWC).
    rng: a PRNG key.
    image_size: int (square) or (H, W).
    batch: batch size of the dummy input.

  Returns:
    Plain dict of variable collections ('params', 'batch_stats').
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  x = jnp.zeros((batch, *image_size, 3), jnp.float32)
  # jit so initialisation is compiled once instead of dispatched op by op,
  # which matters for ResNet-101 on CPU.
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(rng, x)
  return flax.core.unfreeze(variables)


def grow_variables(old_variables, new_variables):
  """Copies every leaf of ``old_variables`` into ``new_variables``.

  Leaves present in both (same path) are taken from ``old_variables``
  unchanged (bit-identical, same object); leaves only in ``new_variables``
  (e.g. ``params/classifier/head_k``) keep their fresh values.

  Args:
    old_variables: variables of the previous step's model (the teacher).
    new_variables: freshly initialised variables of the grown model.

  Returns:
    A plain nested dict with the structure of ``new_variables``.

  Raises:
    ValueError: a shared path has a different shape or dtype, or
      ``old_variables`` has paths the new model lacks (a different
      architecture, not a growth).
  """
  old = traverse_util.flatten_dict(flax.core.unfreeze(old_variables), sep='/')
  new = traverse_util.flatten_dict(flax.core.unfreeze(new_variables), sep='/')
  missing = sorted(set(old) - set(new))
  if missing:
    raise ValueError(f'old_variables paths absent from new_variables: '
                     f'{missing[:5]}{" ..." if len(missing) > 5 else ""}')
  for path, leaf in old.items():
    if jnp.shape(leaf) != jnp.shape(new[path]):
      raise ValueError(f'shape mismatch at {path}: old {jnp.shape(leaf)} vs '
                       f'new {jnp.shape(new[path])}')
    if jnp.result_type(leaf) != jnp.result_type(new[path]):
      raise ValueError(f'dtype mismatch at {path}: old '
                       f'{jnp.result_type(leaf)} vs new '
                       f'{jnp.result_type(new[path])}')
    new[path] = leaf
  return traverse_util.unflatten_dict(new, sep='/')
