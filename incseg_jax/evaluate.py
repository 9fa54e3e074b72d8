"""Re-evaluates a saved task step of a run.

  python -m incseg_jax.evaluate --workdir=/tmp/run1 --step=2

Reads the run's saved config and the step's orbax checkpoint, recomputes the
metrics on the evaluation split and prints them (per-class IoU and the
old / new / all summary).

  python -m incseg_jax.evaluate --workdir=/tmp/run1 --step=1 --classifier_from_step=0

evaluates step 1's network with the classifier of step 0 put back where
step 1 has the same heads (step 1's new heads kept): a diagnostic of where
forgetting lies. If the old classes come back, step 1 kept features the old
heads can still read and forgot in its classifier; if they do not, the
features moved.
"""

import json
import os

from absl import app
from absl import flags

from incseg_jax import checkpointing
from incseg_jax import experiment as experiment_lib
from incseg_jax import models
from incseg_jax import reporting
from incseg_jax import runtime
from incseg_jax import sharding
from incseg_jax import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "Task step to evaluate (default: the last finished one).")
_JSON = flags.DEFINE_string("json", "", "Also write the metrics to this JSON file.")
_SPLIT = flags.DEFINE_string("split", "", "Evaluation split (default: the run's config.dataset.eval_split), e.g. "
                             "test for shapes' held-out split.")
_CLASSIFIER_FROM = flags.DEFINE_integer(
    "classifier_from_step", None, "Diagnostic: evaluate with the classifier parameters of this earlier task step of "
    "the same run put back (every classifier entry that step has; the later steps' heads kept).")
flags.mark_flags_as_required(["workdir"])


def with_classifier_of(variables: dict, donor: dict) -> dict:
  """`variables` whose classifier entries that `donor` also has are `donor`'s.

  Entries are the classifier's sub-modules (`head_0`, `head_1`, ...; SSUL's
  background / unknown heads) in every collection (params, batch_stats);
  those only `variables` has (the later steps' heads) stay. The copy is
  `models.grow_variables`' (the head growth between task steps), restricted
  to the donor's classifier.

  Raises:
    ValueError: a shared entry whose shape or dtype differs, or a donor entry
      that `variables` lacks (not an earlier step of the same network).
  """
  donor_classifier = {col: {"classifier": tree["classifier"]} for col, tree in donor.items() if "classifier" in tree}
  return models.grow_variables(donor_classifier, variables)


def evaluate(workdir: str, task_index: int | None = None, split: str = "",
             classifier_from_step: int | None = None, config=None) -> dict:
  """Restores task step `task_index` of the run in `workdir` and evaluates it.

  Args:
    workdir: a run's workdir.
    task_index: the task step (None: the last finished one).
    split: the evaluation split ("": the one the run evaluated on).
    classifier_from_step: an earlier (or the same) task step of the run whose
      classifier entries replace step `task_index`'s (`with_classifier_of`).
    config: the run's config as `run_config(workdir)` returned it (None:
      read here), so a caller that checked it first reads it once.

  Raises:
    ValueError: no run there, the step does not exist / has no checkpoint, or
      the dataset has no such split; files.CorruptFileError: a damaged
      config.json, identity.json or done.json.
  """
  # Imported here: this module loads no TensorFlow, so `main` names a bad --workdir before TensorFlow loads.
  from incseg_jax import evaluation  # pylint: disable=g-import-not-at-top
  if config is None:
    config = run_config(workdir)
  if split:
    config = config.copy_and_resolve_references()  # the caller's stays as read
    config.dataset.eval_split = split
  exp = experiment_lib.build(config)
  n = exp.num_steps
  if task_index is None:
    finished = [k for k in range(n) if checkpointing.is_done(workdir, k)]
    if not finished:
      raise ValueError(f"--workdir={workdir}: no finished task step yet")
    task_index = finished[-1]
  if not 0 <= task_index < n:
    raise ValueError(f"--step={task_index}: the run has task steps 0..{n - 1}")
  _check_checkpoint(workdir, task_index, "--step")
  mesh = sharding.make_mesh()
  spec = exp.step(task_index)
  variables = workdir_lib.restore_step(exp, workdir, task_index, mesh)
  if classifier_from_step is not None:
    if not 0 <= classifier_from_step <= task_index:
      raise ValueError(f"--classifier_from_step={classifier_from_step}: expected a task step in 0..{task_index}")
    _check_checkpoint(workdir, classifier_from_step, "--classifier_from_step")
    variables = with_classifier_of(variables, workdir_lib.restore_step(exp, workdir, classifier_from_step, mesh))
    print(f"task step {task_index} with the classifier of task step {classifier_from_step} (diagnostic)")
  metrics = evaluation.evaluate_step(exp, spec, variables, mesh)
  done = checkpointing.read_done(workdir, task_index) if checkpointing.is_done(workdir, task_index) else {}
  record = reporting.step_record(exp, spec, metrics, train_seconds=0.0, skipped_batches=done.get("skipped_batches", 0))
  res = reporting.results(exp, [record])
  print(reporting.step_line(record))
  print(reporting.per_class_table(res))
  return record


def run_config(workdir: str):
  """The config saved in the run directory `workdir`.

  Read without the run's lock (evaluation only reads), so a finished step can
  be evaluated while the run trains the next.
  """
  workdir_lib.check_path(workdir, write=False)
  return workdir_lib.read_config(workdir)


def _check_checkpoint(workdir: str, task_index: int, flag: str) -> None:
  if not os.path.isdir(checkpointing.task_dir(workdir, task_index)):
    raise ValueError(f"{flag}={task_index}: no checkpoint for this task step in {workdir}")


def main(argv):
  runtime.setup_command(argv, tensorflow=False)
  with runtime.clear_errors():
    # The workdir and its config before TensorFlow loads: a wrong --workdir costs seconds.
    config = run_config(_WORKDIR.value)
    runtime.hide_accelerators_from_tensorflow()
    record = evaluate(_WORKDIR.value, _STEP.value, _SPLIT.value, _CLASSIFIER_FROM.value, config=config)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
