"""Fault injection for the crash/resume tests: kill this process at a named point.

The environment variable `INCSEG_FAULT` names one point, e.g.

  INCSEG_FAULT="kill:task=1,step=2,phase=train"

and the process sends itself SIGKILL when it reaches it, so a test can stop a
run at a point chosen by step count instead of by a sleep. Phases:

  train       after train step `step` of task step `task` has been dispatched
  checkpoint  while the checkpoint of train step `step` is being written: its
              files are in orbax's temporary directory, not yet committed
  eval        during the evaluation of task step `task`, after batch `step`
  between     after task step `task` is marked done, before the next starts

`step` may be left out (phase between, or "the first time"). Without the
variable every hook is a no-op costing one dict lookup.
"""

from __future__ import annotations

import functools
import os
import signal

ENV = "INCSEG_FAULT"
PHASES = ("train", "checkpoint", "eval", "between")


@functools.cache
def _spec(text: str) -> dict[str, object] | None:
  """Parses `kill:task=1,step=2,phase=train`; None for an empty string."""
  if not text:
    return None
  action, _, args = text.partition(":")
  if action != "kill":
    raise ValueError(f"{ENV}={text!r}: expected 'kill:task=<k>,step=<s>,phase=<{'|'.join(PHASES)}>'")
  spec: dict[str, object] = {"step": None}
  for item in args.split(","):
    key, _, value = item.partition("=")
    key = key.strip()
    if key in ("task", "step"):
      spec[key] = int(value)
    elif key == "phase" and value in PHASES:
      spec[key] = value
    else:
      raise ValueError(f"{ENV}={text!r}: bad item {item!r}")
  if "task" not in spec or "phase" not in spec:
    raise ValueError(f"{ENV}={text!r}: needs task=<k> and phase=<...>")
  return spec


def armed(phase: str, task: int, step: int | None = None) -> bool:
  """Whether `INCSEG_FAULT` names this point."""
  spec = _spec(os.environ.get(ENV, ""))
  if spec is None or spec["phase"] != phase or spec["task"] != task:
    return False
  return spec["step"] is None or step is None or spec["step"] == step


def kill() -> None:
  """SIGKILL to this process: no cleanup, no atexit, no flush; as a crash."""
  os.kill(os.getpid(), signal.SIGKILL)


def point(phase: str, task: int, step: int | None = None) -> None:
  """Kills the process if `INCSEG_FAULT` names this point."""
  if armed(phase, task, step):
    kill()


def kill_before_commit() -> None:
  """Makes the next orbax save die after writing its data, before committing it.

  Orbax (0.12) writes a step into `<step>.orbax-checkpoint-tmp` and then
  `finalize`s it: writes `commit_success.txt` and renames the directory to
  `<step>`. Dying at the start of `finalize` leaves a complete-looking but
  uncommitted temporary directory, the worst case for "is this torn?".
  """
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top

  async def finalize(self):
    del self
    kill()

  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    cls.finalize = finalize
