"""Device mesh and shardings: the batch is split on a `data` axis.

Parameters, optimizer state and the teacher are replicated; every batch array
is sharded along its leading (batch) dimension. The same code runs on one CPU,
on 8 simulated CPU devices (tests) and on a multi-host TPU slice.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  """A 1-D mesh over every device, axis name `data`.

  The axis is `Auto` (XLA propagates shardings through the step) rather than
  the `Explicit` default of recent `jax.make_mesh`, under which ops such as the
  confusion matrix's segment_sum would need hand-written output shardings.
  """
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch: int, what: str) -> None:
  """Raises ValueError unless the batch splits evenly over devices and hosts."""
  n = jax.device_count()
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(f"{what}={global_batch} must be a multiple of the device count ({n})")


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this host's part of a batch into global arrays sharded on `data`."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (params, optimizer state) replicated on every device."""
  return jax.device_put(tree, replicated(mesh))
