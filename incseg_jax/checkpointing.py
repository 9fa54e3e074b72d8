"""Checkpoints: one orbax `CheckpointManager` per task step.

Layout under the workdir:
  checkpoints/task_00/<train step>/{model,train}/   periodic and final states
  checkpoints/task_00/identity.json                 what the states are (model,
                                                    classes per head, dataset),
                                                    written before the first one
  checkpoints/task_00/checksums.json                train step -> sha256 of each
                                                    file of that step's directory,
                                                    written (atomically) after each
                                                    save, verified before a restore
  checkpoints/task_00/done.json                     written (atomically) once the
                                                    step's final state is saved
                                                    and evaluated
Each checkpoint has two items: `model` (params + batch_stats: what a teacher,
`evaluate` or `init_from` needs) and `train` (optimizer state, step, skipped
batches), so a teacher is restored without building an optimizer; a run whose
loss terms carry state (`losses.state`, e.g. EWC's Fisher) saves it as a third
item, `method`. Orbax
writes each step to `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a torn write is never listed as a step (and is removed when the
next writer opens the directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from incseg_jax import files
from incseg_jax import hooks as hooks_lib
from incseg_jax import models
from incseg_jax import sharding

# A checkpoint that is not the state this run expects (other model, classes
# or shapes): the same error as a mismatched identity file.
CheckpointMismatchError = files.MismatchError
NoSpaceError = files.NoSpaceError


METHOD_ITEM = "method"
CHECKSUMS_FILE = "checksums.json"
_HASH_CHUNK = 1 << 20


class ChecksumError(CheckpointMismatchError):
  """A saved checkpoint whose files no longer match the checksums recorded when it was written."""

  def __init__(self, message: str, where: str, problem: str):
    super().__init__(message)
    self.where, self.problem = where, problem


def step_checksums(step_dir: str) -> dict[str, str]:
  """sha256 of every file under `step_dir`, by path relative to it (sorted, '/'-separated)."""
  out = {}
  for parent, dirs, names in os.walk(step_dir):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(parent, name)
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
          digest.update(chunk)
      out[os.path.relpath(path, step_dir).replace(os.sep, "/")] = digest.hexdigest()
  return dict(sorted(out.items()))


def _on_host(tree: Any) -> Any:
  """`tree` with its replicated jax Arrays copied to NumPy; other leaves (sharded arrays, scalars) as they are.

  Orbax saves NumPy arrays in about half the time of the same replicated
  jax Arrays (a test model's 150-array state: 0.27-0.36 s against
  0.56-0.88 s, docs/benchmarks.md): it skips the per-array replica slicing
  and the background device-to-host transfer. The files are the same zarr arrays, restored into
  the target's shardings as before.
  """
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_replicated else x, tree)


def task_dir(workdir: str, task_index: int) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", f"task_{task_index:02d}")


class TaskCheckpointer:
  """Saves and restores the states of one task step."""

  def __init__(self, workdir: str, task_index: int, *, max_to_keep: int = 2, read_only: bool = False,
               hooks: hooks_lib.Hooks = hooks_lib.NONE):
    self.directory = task_dir(workdir, task_index)
    self.task_index = task_index
    self._hooks = hooks
    # A writer removes temporary directories a killed save left behind.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("model", "train", METHOD_ITEM))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _kept_message(self) -> str:
    latest = self.latest_step()
    if latest is None:
      return "no checkpoint of this task step was written yet"
    return f"the last complete checkpoint (train step {latest}) is kept"

  def save(self, step: int, state: Any) -> None:
    """Saves `state` (a TrainState) at train step `step`, blocking until written.

    Raises:
      NoSpaceError: too little free space before the write, or the disk filled
        up during it (the torn write is never listed as a checkpoint).
    """
    files.check_free_space(self.directory, state, self._kept_message())
    model = _on_host({"params": state.params, "batch_stats": state.batch_stats})
    train = _on_host({"opt_state": state.opt_state, "step": state.step, "skipped": state.skipped})
    items = {"model": ocp.args.StandardSave(model), "train": ocp.args.StandardSave(train)}
    if state.method_state is not None:
      items[METHOD_ITEM] = ocp.args.StandardSave(_on_host(state.method_state))
    self._hooks.before_save(self.task_index, step)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        self._record_checksums(step)
    except Exception as e:  # pylint: disable=broad-except
      if files.is_enospc(e):
        raise NoSpaceError(f"the disk filled up while writing a checkpoint in {self.directory} (train step "
                           f"{step}, about {files.tree_bytes(state):,} bytes); {self._kept_message()}. Free some "
                           "space and rerun the same command to resume.") from e
      raise

  def _checksums_path(self) -> str:
    return os.path.join(self.directory, CHECKSUMS_FILE)

  def _read_checksums(self) -> dict[str, dict[str, str]]:
    """train step (as str) -> {relative file: sha256}; {} when none were recorded (checkpoints of older versions)."""
    path = self._checksums_path()
    if not os.path.exists(path):
      return {}
    return files.read_json(path, f"the checksums of the checkpoints in {self.directory}",
                           "Delete it to use those checkpoints unverified (the next save records new checksums).")

  def _record_checksums(self, step: int) -> None:
    """Adds step `step`'s checksums to checksums.json (atomically), dropping those of steps orbax deleted."""
    sums = self._read_checksums()
    kept = {str(s) for s in self._manager.all_steps()}
    sums = {s: v for s, v in sums.items() if s in kept}
    sums[str(step)] = step_checksums(os.path.join(self.directory, str(step)))
    files.write_json_atomic(self._checksums_path(), sums)

  def verify(self, step: int) -> bool:
    """Checks step `step`'s files against checksums.json.

    Returns:
      True when verified, False when no checksum was recorded for it (written
      before checksums existed, or killed between the save and the record).

    Raises:
      ChecksumError: a file differs, is missing or was added (named).
    """
    expected = self._read_checksums().get(str(step))
    if expected is None:
      return False
    where = os.path.join(self.directory, str(step))
    actual = step_checksums(where)
    for name, digest in expected.items():
      if name not in actual:
        problem = f"{os.path.join(where, name)} is missing"
        break
      if actual[name] != digest:
        problem = (f"{os.path.join(where, name)} differs from the checksum recorded when it was written "
                   f"(sha256 {actual[name][:12]}…, recorded {digest[:12]}…)")
        break
    else:
      extra = sorted(set(actual) - set(expected))
      if not extra:
        return True
      problem = f"{os.path.join(where, extra[0])} was added after it was written"
    raise ChecksumError(f"the checkpoint {where} is damaged: {problem} ({self._checksums_path()}). Its state "
                        "cannot be trusted; delete that directory to fall back to an earlier checkpoint of this "
                        "task step, or train the step again.", where, problem)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def set_aside(self, step: int) -> str:
    """Moves a damaged step directory out of orbax's sight (kept for inspection); returns where it went."""
    n = 0
    while os.path.exists(target := os.path.join(self.directory, f"damaged_{step}" + (f".{n}" if n else ""))):
      n += 1
    shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def _restore(self, step: int, **targets) -> Any:
    """Orbax restore whose failure says which checkpoint did not fit.

    Args:
      step: the train step to restore.
      **targets: item name -> abstract pytree (ShapeDtypeStructs).

    Raises:
      CheckpointMismatchError: another tree structure, or other shapes or
        dtypes (orbax restores an array at its saved shape whatever the
        target says, so this is checked here).
    """
    where = os.path.join(self.directory, str(step))
    hint = "Was it written by another experiment or version? Use a new --workdir."
    self.verify(step)
    if METHOD_ITEM in targets and not os.path.isdir(os.path.join(where, METHOD_ITEM)):
      raise CheckpointMismatchError(
          f"cannot restore the checkpoint {where}: it holds no method state (no '{METHOD_ITEM}' item), which this "
          f"run's loss terms carry ({', '.join(sorted(targets[METHOD_ITEM] or {}))}); it was saved by a run "
          f"without them. {hint}")
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(tree) for name, tree in targets.items()}))
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointMismatchError(f"cannot restore the checkpoint {where}: it does not match the state this run "
                                    f"expects ({type(e).__name__}: {reason[:300]}). {hint}") from e
    differences = []
    for name, tree in targets.items():
      for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(out[name])):
        if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
          differences.append(f"{name}{jax.tree_util.keystr(path)}: saved {got.dtype}{list(got.shape)}, "
                             f"expected {want.dtype}{list(want.shape)}")
    if differences:
      raise CheckpointMismatchError(f"cannot restore the checkpoint {where}: it does not match the state this run "
                                    f"expects ({len(differences)} arrays differ: " + "; ".join(differences[:3])
                                    + (" ..." if len(differences) > 3 else "") + f"). {hint}")
    return out

  def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores a full TrainState into the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    model_t = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
    train_t = {"opt_state": abstract_state.opt_state, "step": abstract_state.step, "skipped": abstract_state.skipped}
    targets = {"model": model_t, "train": train_t}
    if abstract_state.method_state is not None:
      targets[METHOD_ITEM] = abstract_state.method_state
    out = self._restore(step, **targets)
    return abstract_state.replace(params=out.model["params"], batch_stats=out.model["batch_stats"],
                                  opt_state=out.train["opt_state"], step=out.train["step"],
                                  skipped=out.train["skipped"],
                                  method_state=out[METHOD_ITEM] if METHOD_ITEM in targets else None)

  def restore_latest_intact(self, abstract_state: Any) -> Any:
    """`restore_state` of the latest checkpoint, or of the latest intact one before it when it is damaged.

    A damaged checkpoint is moved aside (`damaged_<step>`, kept for inspection) and the fallback said in one line.

    Raises:
      ChecksumError: every checkpoint of this task step is damaged (the latest one is named).
    """
    first_error = None
    for step in reversed(self.all_steps()):
      try:
        state = self.restore_state(abstract_state, step)
      except ChecksumError as e:
        first_error = first_error or e
        continue
      if first_error is not None:
        kept = [self.set_aside(bad) for bad in self.all_steps() if bad > step]
        print(f"warning: task step {self.task_index}: the checkpoint {first_error.where} is damaged: "
              f"{first_error.problem}; falling back to the previous intact checkpoint (train step {step}); the "
              f"damaged one is kept as {', '.join(kept)}", flush=True)
      return state
    raise first_error

  def restore_method_state(self, abstract_method_state: Any, step: int | None = None) -> Any:
    """Restores only the `method` item (the state the next task step, or an `init_from` run, starts from)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self._restore(step, **{METHOD_ITEM: abstract_method_state})[METHOD_ITEM]

  def restore_variables(self, abstract_variables: Any, step: int | None = None) -> dict[str, Any]:
    """Restores only {'params', 'batch_stats'} (teacher, evaluation)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._restore(step, model=abstract_variables)
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
  files.write_json_atomic(_done_path(workdir, task_index), record)


def read_done(workdir: str, task_index: int) -> dict[str, Any]:
  """Task step `task_index`'s record (done.json); a damaged one is named (`files.CorruptFileError`)."""
  return files.read_json(_done_path(workdir, task_index), f"the record of finished task step {task_index}",
                         "Delete it and rerun the run's command: the step is evaluated again from its final "
                         "checkpoint and the record rewritten.")


def write_identity(workdir: str, task_index: int, identity: dict[str, Any]) -> None:
  """Records what task step `task_index`'s states are (before the first is written)."""
  files.write_identity(task_dir(workdir, task_index), identity)


def check_identity(workdir: str, task_index: int, expected: dict[str, Any], what: str = "",
                   defaults: dict[str, Any] | None = None) -> bool:
  """`files.check_identity` of task step `task_index`'s checkpoint directory.

  Returns:
    False when the step has no identity file yet, else True.

  Raises:
    CheckpointMismatchError: the identities differ; the message lists how.
  """
  return files.check_identity(task_dir(workdir, task_index), expected, what=what, defaults=defaults,
                              name=f"task step {task_index}")


def restore_method_state(workdir: str, task_index: int, names) -> dict[str, Any]:
  """Task step `task_index`'s final method states (term name -> state tree) as host arrays, read-only.

  Restored as saved (the structure of a state depends on the steps before),
  then checked to hold every term in `names`.

  Raises:
    CheckpointMismatchError: no `method` item, or one without some term's state.
  """
  ckpt = TaskCheckpointer(workdir, task_index, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    where = os.path.join(ckpt.directory, str(step))
    if not os.path.isdir(os.path.join(where, METHOD_ITEM)):
      raise CheckpointMismatchError(
          f"the checkpoint {where} holds no method state (no '{METHOD_ITEM}' item), which this run's loss terms "
          f"{sorted(names)} carry from step to step: it was saved by a run without them (e.g. a method without "
          "this state as config.init_from). Train that step with this method.")
    state = jax.device_get(ckpt.restore_method_state(None))
  finally:
    ckpt.close()
  missing = sorted(set(names) - set(state or {}))
  if missing:
    raise CheckpointMismatchError(f"the checkpoint {where} holds the method state of {sorted(state or {})}, "
                                  f"not of {missing}, which this run's loss terms need.")
  return {name: state[name] for name in names}


def restore_variables(workdir: str, task_index: int, model, image_size: int, mesh) -> dict[str, Any]:
  """Task step `task_index`'s final {'params', 'batch_stats'}, replicated over `mesh`, read-only.

  The caller checks the step's identity first (`workdir.check_step_identity`).
  """
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                          models.abstract_variables(model, image_size))
  ckpt = TaskCheckpointer(workdir, task_index, read_only=True)
  try:
    return ckpt.restore_variables(abstract)
  finally:
    ckpt.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
