"""Fault injection for the crash/resume tests: kill a run at a named point.

  INCSEG_FAULT="kill:task=1,step=2,phase=train" \
      python -m incseg_jax.testing.faults --config=... --workdir=...

runs `incseg_jax.main` with hooks (see incseg_jax/hooks.py) that send the
process SIGKILL when it reaches the named point, so a test stops a run at a
point chosen by step count instead of by a sleep. Phases:

  train       after train step `step` of task step `task` has been dispatched
  checkpoint  while the checkpoint of train step `step` is being written: its
              files are in orbax's temporary directory, not yet committed
  eval        during the evaluation of task step `task`, after batch `step`
  between     after task step `task` is marked done, before the next starts

`step` may be left out (phase between, or "the first time"). Production code
never imports this module.
"""

from __future__ import annotations

import functools
import os
import signal

from absl import app

from incseg_jax import hooks
from incseg_jax import runtime

ENV = "INCSEG_FAULT"
PHASES = ("train", "checkpoint", "eval", "between")


def parse(text: str) -> dict[str, object]:
  """Parses `kill:task=1,step=2,phase=train`.

  Raises:
    ValueError: a malformed spec, naming the bad item.
  """
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


def kill() -> None:
  """SIGKILL to this process: no cleanup, no atexit, no flush; as a crash."""
  os.kill(os.getpid(), signal.SIGKILL)


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


class KillAt(hooks.Hooks):
  """Hooks that SIGKILL the process at the point a spec names (see module doc)."""

  def __init__(self, spec: str | dict[str, object]):
    self.spec = parse(spec) if isinstance(spec, str) else dict(spec)

  def armed(self, phase: str, task: int, step: int | None = None) -> bool:
    """Whether the spec names this point."""
    spec = self.spec
    if spec["phase"] != phase or spec["task"] != task:
      return False
    return spec["step"] is None or step is None or spec["step"] == step

  def after_train_step(self, task_index: int, step: int) -> None:
    if self.armed("train", task_index, step):
      kill()

  def before_save(self, task_index: int, step: int) -> None:
    if self.armed("checkpoint", task_index, step):
      kill_before_commit()

  def after_eval_batch(self, task_index: int, batch: int) -> None:
    if self.armed("eval", task_index, batch):
      kill()

  def after_task_step(self, task_index: int) -> None:
    if self.armed("between", task_index):
      kill()


def main() -> None:
  """`incseg_jax.main` with the kill point of `$INCSEG_FAULT` (none when unset)."""
  # Imported here: importing incseg_jax.main defines the command's flags.
  from incseg_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  text = os.environ.get(ENV, "")
  run_hooks = KillAt(text) if text else hooks.NONE
  app.run(functools.partial(main_lib.main, run_hooks=run_hooks), flags_parser=runtime.parse_flags)


if __name__ == "__main__":
  main()
