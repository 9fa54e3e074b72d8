"""Checkpoints: one orbax `CheckpointManager` per task step.

Layout under the workdir:
  checkpoints/task_00/<train step>/{model,train}/   periodic and final states
  checkpoints/task_00/done.json                     written (atomically) once the
                                                    step's final state is saved
                                                    and evaluated
Each checkpoint has two items: `model` (params + batch_stats: what a teacher,
`evaluate` or `init_from` needs) and `train` (optimizer state, step), so a
teacher is restored without building an optimizer. Orbax writes each step
to a temporary directory and renames it when complete, so a torn write is
never listed as a step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def task_dir(workdir: str, task_index: int) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", f"task_{task_index:02d}")


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON so that a reader sees either the old or the new file."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class TaskCheckpointer:
  """Saves and restores the states of one task step."""

  def __init__(self, workdir: str, task_index: int, *, max_to_keep: int = 2, read_only: bool = False):
    self.directory = task_dir(workdir, task_index)
    self.task_index = task_index
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "train"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` (a TrainState) at train step `step`, blocking until written."""
    model = {"params": state.params, "batch_stats": state.batch_stats}
    train = {"opt_state": state.opt_state, "step": state.step}
    self._manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                                     train=ocp.args.StandardSave(train)), force=True)
    self._manager.wait_until_finished()

  def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores a full TrainState into the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    model_t = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
    train_t = {"opt_state": abstract_state.opt_state, "step": abstract_state.step}
    out = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(model_t),
                                                              train=ocp.args.StandardRestore(train_t)))
    return abstract_state.replace(params=out.model["params"], batch_stats=out.model["batch_stats"],
                                  opt_state=out.train["opt_state"], step=out.train["step"])

  def restore_variables(self, abstract_variables: Any, step: int | None = None) -> dict[str, Any]:
    """Restores only {'params', 'batch_stats'} (teacher, evaluation)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_variables)))
    return dict(out.model)

  def close(self) -> None:
    self._manager.close()


def _done_path(workdir: str, task_index: int) -> str:
  return os.path.join(task_dir(workdir, task_index), "done.json")


def is_done(workdir: str, task_index: int) -> bool:
  """Whether task step `task_index` finished (final state saved and evaluated)."""
  return os.path.exists(_done_path(workdir, task_index))


def mark_done(workdir: str, task_index: int, record: dict[str, Any]) -> None:
  """Declares a task step complete; `record` (its metrics) goes in done.json."""
  write_json_atomic(_done_path(workdir, task_index), record)


def read_done(workdir: str, task_index: int) -> dict[str, Any]:
  with open(_done_path(workdir, task_index)) as f:
    return json.load(f)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
