"""Observation points of a run, for tests and tools; no-ops by default.

The trainer calls `after_train_step`, `after_eval_batch` and
`after_task_step`, the checkpointer calls `before_save`, each with the task
step and a count. Production code never overrides them; the crash/resume
tests (incseg_jax/testing/faults.py) kill the process at one of them, so a
kill point is named by step count instead of by a sleep.
"""

from __future__ import annotations


class Hooks:
  """Does nothing at every point; subclass and override what you need."""

  def after_train_step(self, task_index: int, step: int) -> None:
    """Train step `step` (1-based) of task step `task_index` has been dispatched."""

  def before_save(self, task_index: int, step: int) -> None:
    """The checkpoint of train step `step` is about to be written."""

  def after_eval_batch(self, task_index: int, batch: int) -> None:
    """Evaluation batch `batch` (1-based) of task step `task_index` has been counted."""

  def after_task_step(self, task_index: int) -> None:
    """Task step `task_index` has been marked done; the next has not started."""


NONE = Hooks()
