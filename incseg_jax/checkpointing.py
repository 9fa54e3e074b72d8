"""Checkpoints: one orbax `CheckpointManager` per task step.

Layout under the workdir:
  checkpoints/task_00/<train step>/{model,train}/   periodic and final states
  checkpoints/task_00/identity.json                 what the states are (model,
                                                    classes per head, dataset),
                                                    written before the first one
  checkpoints/task_00/done.json                     written (atomically) once the
                                                    step's final state is saved
                                                    and evaluated
Each checkpoint has two items: `model` (params + batch_stats: what a teacher,
`evaluate` or `init_from` needs) and `train` (optimizer state, step, skipped
batches), so a teacher is restored without building an optimizer. Orbax
writes each step to `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a torn write is never listed as a step (and is removed when the
next writer opens the directory).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from incseg_jax import faults

IDENTITY_FILE = "identity.json"
# Free space asked for beyond the state's own bytes: orbax's metadata files
# and the filesystem's block rounding.
_SPACE_MARGIN_FRACTION = 0.1
_SPACE_MARGIN_BYTES = 1 << 20


class NoSpaceError(OSError):
  """Too little free disk space to write a checkpoint (errno ENOSPC)."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self) -> str:
    return self.strerror


class CheckpointMismatchError(ValueError):
  """A checkpoint that is not the state this run expects (other model/classes)."""


def task_dir(workdir: str, task_index: int) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", f"task_{task_index:02d}")


def write_text_atomic(path: str, text: str) -> None:
  """Writes a file so that a reader (or a rerun after a kill) sees either the old or the new one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON atomically (see `write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def tree_bytes(tree: Any) -> int:
  """Total bytes of the arrays in a pytree (global sizes)."""
  return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def _is_enospc(exc: BaseException) -> bool:
  """Whether `exc` (or what it wraps) is a "no space left on device" error."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(exc):  # tensorstore reports it as text
      return True
    exc = exc.__cause__ or exc.__context__
  return False


class TaskCheckpointer:
  """Saves and restores the states of one task step."""

  def __init__(self, workdir: str, task_index: int, *, max_to_keep: int = 2, read_only: bool = False):
    self.directory = task_dir(workdir, task_index)
    self.task_index = task_index
    # A writer removes temporary directories a killed save left behind.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "train"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _kept_message(self) -> str:
    latest = self.latest_step()
    if latest is None:
      return "no checkpoint of this task step was written yet"
    return f"the last complete checkpoint (train step {latest}) is kept"

  def check_free_space(self, state: Any) -> None:
    """Raises NoSpaceError unless the disk holds `state` (plus a margin)."""
    size = tree_bytes(state)
    needed = int(size * (1 + _SPACE_MARGIN_FRACTION)) + _SPACE_MARGIN_BYTES
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise NoSpaceError(f"not enough free disk space for a checkpoint in {self.directory}: needs about "
                         f"{needed:,} bytes, {free:,} free; {self._kept_message()}. Free some space and rerun "
                         "the same command to resume.")

  def save(self, step: int, state: Any) -> None:
    """Saves `state` (a TrainState) at train step `step`, blocking until written.

    Raises:
      NoSpaceError: too little free space before the write, or the disk filled
        up during it (the torn write is never listed as a checkpoint).
    """
    self.check_free_space(state)
    model = {"params": state.params, "batch_stats": state.batch_stats}
    train = {"opt_state": state.opt_state, "step": state.step, "skipped": state.skipped}
    if faults.armed("checkpoint", self.task_index, step):
      faults.kill_before_commit()
    try:
      self._manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                                       train=ocp.args.StandardSave(train)), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if _is_enospc(e):
        raise NoSpaceError(f"the disk filled up while writing a checkpoint in {self.directory} (train step "
                           f"{step}, about {tree_bytes(state):,} bytes); {self._kept_message()}. Free some "
                           "space and rerun the same command to resume.") from e
      raise

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
    out = self._restore(step, model=model_t, train=train_t)
    return abstract_state.replace(params=out.model["params"], batch_stats=out.model["batch_stats"],
                                  opt_state=out.train["opt_state"], step=out.train["step"],
                                  skipped=out.train["skipped"])

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
  write_json_atomic(_done_path(workdir, task_index), record)


def read_done(workdir: str, task_index: int) -> dict[str, Any]:
  with open(_done_path(workdir, task_index)) as f:
    return json.load(f)


def write_identity(workdir: str, task_index: int, identity: dict[str, Any]) -> None:
  """Records what task step `task_index`'s states are (before the first is written)."""
  os.makedirs(task_dir(workdir, task_index), exist_ok=True)
  write_json_atomic(os.path.join(task_dir(workdir, task_index), IDENTITY_FILE), identity)


def check_identity(workdir: str, task_index: int, expected: dict[str, Any], what: str = "",
                   defaults: dict[str, Any] | None = None) -> bool:
  """Checks that task step `task_index`'s states in `workdir` are `expected`.

  Args:
    workdir: the run directory holding the checkpoints.
    task_index: the task step.
    expected: the identity this run would write (see `train.step_identity`).
    what: how the caller uses them, for the message ("teacher", "resume").
    defaults: values of fields added since the identity was saved (same
      nesting); such a field absent from the saved identity counts as equal
      when `expected` holds its default.

  Returns:
    False when the directory has no identity file (nothing saved yet, or a
    run of a version that did not write one: nothing to compare), else True.

  Raises:
    CheckpointMismatchError: the identities differ; the message lists how.
  """
  path = os.path.join(task_dir(workdir, task_index), IDENTITY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  expected = json.loads(json.dumps(expected))  # tuples -> lists, as saved
  differences = _diff(saved, expected, defaults=defaults or {})
  if differences:
    raise CheckpointMismatchError(
        f"{task_dir(workdir, task_index)} holds task step {task_index} of a different experiment, so it cannot "
        f"serve {what or 'this run'}; differing (saved vs now):\n  " + "\n  ".join(differences))
  return True


def _diff(a: Any, b: Any, path: str = "", defaults: Any = None) -> list[str]:
  """Dotted paths where two JSON values differ (lists of equal length element-wise)."""
  if isinstance(a, dict) and isinstance(b, dict):
    defaults = defaults if isinstance(defaults, dict) else {}
    out = []
    for k in sorted(set(a) | set(b)):
      where = f"{path}.{k}" if path else k
      if k in a and k in b:
        out += _diff(a[k], b[k], where, defaults.get(k))
      elif not (k in b and k in defaults and b[k] == defaults[k]):
        out.append(f"{where}: {_short(a.get(k, '<absent>'))} vs {_short(b.get(k, '<absent>'))}")
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
    return [line for i, (x, y) in enumerate(zip(a, b)) for line in _diff(x, y, f"{path}[{i}]")]
  return [] if a == b else [f"{path}: {_short(a)} vs {_short(b)}"]


def _short(value: Any) -> str:
  """repr, with long lists abbreviated to their ends and length."""
  if isinstance(value, list) and len(value) > 6:
    return f"[{', '.join(map(repr, value[:3]))}, ..., {value[-1]!r}] ({len(value)} items)"
  return repr(value)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
