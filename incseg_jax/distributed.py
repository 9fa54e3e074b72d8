"""Multi-process runs: `jax.distributed` from the environment or `config.distributed`, and their record.

Every process runs the same command. Each one reads only its slice of every
global batch (`data/pipeline.py`), all of them write the orbax checkpoints
together, and only process 0 writes `config.json`, results, logs, done
records and TensorBoard events. The other processes' console output goes to
`<workdir>/logs/process_<i>.log`.

How a run finds its peers:

* `--config.distributed.coordinator_address=HOST:PORT` with
  `num_processes` and `process_id`: explicit, e.g. several processes on one
  machine (CPU collectives over gloo), or any cluster.
* `--config.distributed.auto=True`: `jax.distributed.initialize()` with the
  platform's auto-detection, e.g. on a TPU pod slice, where every TPU VM
  worker runs the same command (`launch/tpu_vm.sh`).
* Otherwise, when a SLURM or Open MPI job (or `TPU_WORKER_HOSTNAMES`) says
  there is more than one process, the same auto-detection. A plain
  single-machine run never waits for peers.

A workdir records the process count of the run that created it
(`topology.json`). A resume on another count is refused, naming both,
unless `config.distributed.allow_resize` is set: the batches, and so the
results up to float round-off, do not depend on the process count.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax

from incseg_jax import files

TOPOLOGY_FILE = "topology.json"

# Environment variables whose value is the process count of a launcher that jax.distributed detects.
_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _cluster_processes() -> int:
  """How many processes the launcher environment announces (1 when none does)."""
  for name in _COUNT_VARIABLES:
    if os.environ.get(name, "").isdigit():
      return int(os.environ[name])
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if hosts:
    return len([h for h in hosts.split(",") if h])
  return 1


def check_config(dist) -> None:
  """`config.distributed`: an explicit coordinator needs a process count and this process's id.

  Raises:
    ValueError: naming the field and what was expected.
  """
  if not dist or not dist.coordinator_address:
    return
  n, pid = dist.num_processes, dist.process_id
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ValueError(f"config.distributed.num_processes={n!r}: expected the number of processes (>= 1) that "
                     f"join {dist.coordinator_address}")
  if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < n:
    raise ValueError(f"config.distributed.process_id={pid!r}: expected this process's id from 0 to {n - 1}")
  if ":" not in dist.coordinator_address:
    raise ValueError(f"config.distributed.coordinator_address={dist.coordinator_address!r}: expected HOST:PORT")


def initialize(config) -> bool:
  """Joins the other processes of the run, if there are any; returns whether it did.

  Must run before anything touches a JAX device (the entry points call it
  first). On CPU the collectives go over gloo.

  Raises:
    ValueError: a bad `config.distributed` (see `check_config`).
  """
  dist = config.get("distributed")
  check_config(dist)
  if jax.distributed.is_initialized():
    return True
  explicit = bool(dist and dist.coordinator_address)
  auto = bool(dist and dist.get("auto"))
  if not explicit and not auto and _cluster_processes() <= 1:
    return False
  # Only the CPU backend reads this; accelerators use their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = int(dist.initialization_timeout) if dist else 300
  if explicit:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                               process_id=dist.process_id, initialization_timeout=timeout)
  else:
    jax.distributed.initialize(initialization_timeout=timeout)
  return True


def quiet_other_processes(workdir: str) -> None:
  """Sends the console output of every process but 0 to `<workdir>/logs/process_<i>.log`."""
  if jax.process_index() == 0:
    return
  directory = os.path.join(workdir, "logs")
  os.makedirs(directory, exist_ok=True)
  log = open(os.path.join(directory, f"process_{jax.process_index()}.log"), "a", buffering=1)  # pylint: disable=consider-using-with
  sys.stdout = sys.stderr = log


def topology() -> dict[str, Any]:
  return {"processes": jax.process_count(), "devices": jax.device_count(), "platform": jax.devices()[0].platform}


def check_topology(workdir: str, allow_resize: bool = False) -> None:
  """Refuses to resume `workdir` on another process count than it was run with (unless `allow_resize`).

  Raises:
    ValueError: the saved process count differs.
  """
  path = os.path.join(workdir, TOPOLOGY_FILE)
  if not os.path.exists(path) or allow_resize:
    return
  saved = files.read_json(path, "the process and device counts of the run that created this workdir",
                          "Delete it if the run's checkpoints are still wanted under the current count.")
  now = jax.process_count()
  if saved.get("processes") != now:
    raise ValueError(
        f"workdir {workdir} was run by {saved.get('processes')} process(es) ({path}), this run has {now}: start "
        "it with the same count, or pass --config.distributed.allow_resize=True to continue on this count (the "
        "batches do not depend on it, so results agree up to float round-off)")


def record_topology(workdir: str) -> None:
  """Writes this run's process and device counts into `workdir` (process 0; `check_topology` passed)."""
  if jax.process_index() == 0:
    files.write_json_atomic(os.path.join(workdir, TOPOLOGY_FILE), topology())
