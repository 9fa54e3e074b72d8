"""Variable helpers: jitted initialisation and step-to-step head growth.

This module owns how a step-k model's variables are created from step k-1's:
init the new model freshly, then copy every shared leaf from the old one, so
only `classifier/head_k` keeps its fresh initialisation.
"""

import functools
from typing import Callable

import flax
import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from incseg_jax.models.classifier import IncrementalClassifier, SSULHead

# Initialisation is random-number generation only (the forward pass it traces
# is dead code), and LLVM's default (-O2) loop passes spend 10-14 s compiling
# it for a test-sized model on a CPU. At -O1 the same program compiles 3-4x
# faster for test-sized models (17 -> 4 s, width-8 ResNet), 1.5-1.7x for
# ResNet-50 and 1.0-1.5x for ResNet-101 (AMD EPYC, 2026-12-03, script in
# docs/benchmarks.md), and its values are bit for bit those of -O2
# (tests/models_test.py checks it).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def jit_init(fn):
  """`jax.jit(fn)` compiled with `INIT_COMPILER_OPTIONS`, for functions that only initialise variables.

  Called inside another trace (e.g. under `jax.eval_shape`), where JAX
  refuses compiler options on a nested jit, it is a plain `jax.jit(fn)`.
  A traced argument shows the nesting up front; a trace whose arguments are
  all concrete (closed-over arrays) is only seen when JAX refuses the options,
  and then the call is retried without them.
  """
  fast, nested = jax.jit(fn, compiler_options=INIT_COMPILER_OPTIONS), jax.jit(fn)

  def call(*args):
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
      return nested(*args)
    try:
      return fast(*args)
    except ValueError as e:
      if 'compiler_options' not in str(e) or 'nested jit' not in str(e):
        raise
      return nested(*args)

  return call


def init_variables(model, rng, image_size, batch: int = 1):
  """Initialises `model` under `jax.jit` on a zero image batch.

  Args:
    model: a `SegModel` (anything whose `__call__(x, train)` takes NHWC).
    rng: a PRNG key.
    image_size: int (square) or (H, W).
    batch: batch size of the dummy input.

  Returns:
    Plain dict of variable collections ('params', 'batch_stats').
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  x = jnp.zeros((batch, *image_size, 3), jnp.float32)
  variables = _jitted_init(model)(rng, x)
  return flax.core.unfreeze(variables)


# jit so initialisation is compiled once instead of dispatched op by op, which matters for ResNet-101 on CPU;
# memoised by value (flax modules compare by their fields), so the runs of a sweep or of a test process that
# build the same model trace its initialisation once.
@functools.lru_cache(maxsize=16)
def _jitted_init(model) -> Callable:
  return jit_init(lambda r, x: model.init(r, x, train=False))


def grow_variables(old_variables, new_variables):
  """Copies every leaf of `old_variables` into `new_variables`.

  Leaves present in both (same path) are taken from `old_variables`
  unchanged (bit-identical, same object); leaves only in `new_variables`
  (e.g. `params/classifier/head_k`) keep their fresh values.

  Args:
    old_variables: variables of the previous step's model (the teacher).
    new_variables: freshly initialised variables of the grown model.

  Returns:
    A plain nested dict with the structure of `new_variables`.

  Raises:
    ValueError: a shared path has a different shape or dtype, or
      `old_variables` has paths the new model lacks (a different
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


def add_head(model, old_variables, rng, image_size):
  """Step k's variables from step k-1's: the old leaves plus one new head.

  Only the new head `classifier/head_k` is initialised (with the
  classifier's own initialisers; an SSUL head's BatchNorm statistics too), instead of a full `init` of the grown
  model: a full init compiles the whole network once more per task step,
  which costs seconds on CPU and minutes for ResNet-101. The result is
  checked against the grown model's variable shapes (`jax.eval_shape`).

  Args:
    model: the grown `SegModel` (one more head than `old_variables` has).
    old_variables: the previous step's variables (the teacher's).
    rng: PRNG key for the new head.
    image_size: int or (H, W), only used to trace shapes.

  Returns:
    A plain nested dict of host (NumPy) arrays, old leaves bit-identical.

  Raises:
    ValueError: `old_variables` is not the previous step of `model`.
  """
  abstract = abstract_variables(model, image_size)
  k = len(model.classes_per_step) - 1
  name = f'head_{k}'
  if getattr(model, 'head', 'linear') == 'ssul':  # conv + BatchNorm: parameters and statistics
    width = abstract['params']['classifier'][name]['conv']['kernel'].shape[2]
    head = SSULHead(model.classes_per_step[-1], model.bn_frozen, model.dtype).init(
        rng, jnp.zeros((1, 1, 1, width), jnp.float32), train=False)
  else:
    kernel = abstract['params']['classifier'][name]['kernel']
    head = {'params': IncrementalClassifier((model.classes_per_step[-1],), model.dtype).init(
        rng, jnp.zeros((1, 1, 1, kernel.shape[2]), jnp.float32))['params']['head_0']}
  new = jax.tree.map(np.asarray, flax.core.unfreeze(old_variables))
  if name in new.get('params', {}).get('classifier', {}):
    raise ValueError(f'old_variables already has classifier/{name}: not the previous step of this model')
  for collection, values in head.items():
    new.setdefault(collection, {}).setdefault('classifier', {})[name] = jax.tree.map(np.asarray, values)
  # Reuses grow_variables' checks: same paths, shapes and dtypes as a full init.
  return grow_variables(new, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract))


def batchnorm_prefixes(variables):
  """Paths ('backbone/stem/bn', ...) of every BatchNorm module of a model.

  Read from the `batch_stats` collection (every BatchNorm owns one entry
  there, whatever its name), so freezing "all BatchNorm" does not depend on
  naming conventions.
  """
  stats = traverse_util.flatten_dict(flax.core.unfreeze(variables.get('batch_stats', {})), sep='/')
  return tuple(sorted({path.rsplit('/', 1)[0] for path in stats}))


def abstract_variables(model, image_size):
  """Shapes and dtypes of `model`'s variables, without allocating them (new containers at every call)."""
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  return jax.tree.map(lambda s: s, _abstract_variables(model, size))


# Memoised by value: validation, head growth, restores and the train step all ask for the same shapes, and
# each trace of a ResNet-101's initialisation takes seconds.
@functools.lru_cache(maxsize=32)
def _abstract_variables(model, image_size: tuple[int, int]):
  return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))


def path_str(path) -> str:
  """'backbone/stage1/block0/conv1/kernel' for a tree_util key path."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def is_frozen(path: str, frozen) -> bool:
  """Whether parameter path `path` lies under one of the `frozen` prefixes."""
  return any(path == p or path.startswith(p.rstrip('/') + '/') for p in frozen)


def frozen_mask(tree, frozen):
  """A pytree of bools: True for leaves under one of the `frozen` prefixes."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_frozen(path_str(p), frozen), tree)
