"""Which saved things belong to this experiment: the workdir's config, its checkpoints, `init_from`.

A workdir holds one experiment, run by one process at a time: `locked` holds
it for a run (a second run is refused naming the first), `check_workdir`
saves the config beside the checkpoints or refuses a run of another
experiment there. Each task step's checkpoints carry an identity (dataset,
model, classes per head), checked before they serve as a resume point, a
teacher, an evaluation or another run's base model (`init_from`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator

import jax

from incseg_jax import checkpointing
from incseg_jax import config_lib
from incseg_jax import experiment as experiment_lib
from incseg_jax import files
from incseg_jax import losses
from incseg_jax import methods

CONFIG_FILE = "config.json"
_CONFIG_WHAT = "the config of the run in this workdir"
_CONFIG_REMEDY = ("Delete it to save this run's config there anew (the checkpoints stay protected by their "
                  "identity.json files), or use a new --workdir.")
_PURPOSE = "a run writes its checkpoints, logs and results there"


def check_path(workdir: str, write: bool = True) -> None:
  """Refuses a `--workdir` that cannot be a run directory, before anything is read or written.

  Args:
    workdir: the `--workdir` value.
    write: the command writes there (train), not only reads (evaluate).

  Raises:
    ValueError: empty, an existing file, or (`write`) not writable; the
      message names the path and what was expected.
  """
  if not workdir:
    raise ValueError("--workdir is empty: expected the path of a run directory (created if missing); "
                     f"{_PURPOSE}")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir} is an existing file, not a directory; expected a run directory "
                     f"(created if missing): {_PURPOSE}. Choose another --workdir.")
  problem = files.unwritable(workdir) if write else None
  if problem:
    raise ValueError(f"workdir {workdir} {problem}; expected a directory this process can create and write: "
                     f"{_PURPOSE}. Make it writable or choose another --workdir.")


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds `workdir` for one run: checked (`check_path`), created if missing, locked (`files.hold_lock`).

  A second run on the same workdir is refused at once, naming the holder's
  process; the lock goes with the process, so a crashed run's workdir is
  taken over by the next. Directories this call created are removed again if
  the run left them empty (a run refused by a later check writes nothing).
  Only process 0 of a multi-host run locks: the others share its workdir.

  Raises:
    ValueError: see `check_path`; files.LockedError: another run holds it.
  """
  check_path(workdir)
  if jax.process_index() != 0:
    yield
    return
  created = []
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    created.append(path)
    path = os.path.dirname(path)
  os.makedirs(workdir, exist_ok=True)
  try:
    with files.hold_lock(workdir, what="workdir"):
      yield
  finally:
    for directory in created:  # deepest first; a directory with anything in it stays
      try:
        os.rmdir(directory)
      except OSError:
        break


def check_workdir(config, workdir: str, allow_change: bool = False, verify: Callable[[], None] | None = None) -> None:
  """Saves the config beside the checkpoints, or refuses a different experiment.

  Args:
    config: this run's config.
    workdir: the run directory.
    allow_change: accept a config that differs from the saved one (the
      `--allow_config_change` flag): the saved config.json is kept as
      config.<n>.json (first unused n) and this one is saved. The checkpoints
      stay protected by their identity files (see `step_identity`).
    verify: optional check run after the comparison and before anything is
      written (`train.run` checks the checkpoints' identities there), so a
      refused run changes nothing.

  Raises:
    ValueError: the workdir holds a run whose config differs in a field that
      changes results (and `allow_change` is off); the message lists the
      differing fields.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  archive = None
  if os.path.exists(path):
    old_text = files.read_text(path, _CONFIG_WHAT, _CONFIG_REMEDY)
    differences = config_differences(config, old_text, path)
    if differences and not allow_change:
      raise ValueError(f"workdir {workdir} holds a different experiment ({path}); differing fields "
                       f"(saved vs now):\n  " + "\n  ".join(differences) +
                       "\nUse a new --workdir, delete this one to start over, or pass --allow_config_change "
                       "to continue it under the new config.")
    if differences:
      n = 1
      while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
        n += 1
      archive = os.path.join(workdir, f"config.{n}.json")
      print(f"--allow_config_change: config changed (saved vs now):\n  " + "\n  ".join(differences) +
            f"\nthe previous config is kept as {archive}", flush=True)
  if verify is not None:
    verify()
  if jax.process_index() == 0:
    if archive:
      files.write_text_atomic(archive, old_text)
    files.write_text_atomic(path, config_lib.to_json(config))


def config_differences(config, saved_text: str, path: str = CONFIG_FILE) -> list[str]:
  """The fields that make `config` another experiment than the saved config.json text.

  Fields that do not change results (`config_lib.VOLATILE_FIELDS`) are left
  out; a field added since the file was saved counts as equal at its default
  (a loss option: at the term's keyword default).

  Raises:
    files.CorruptFileError: `saved_text` is not JSON (`path` names the file).
  """
  saved = config_lib.experiment_fields(config_lib.from_dict(
      files.parse_json(saved_text, path, _CONFIG_WHAT, _CONFIG_REMEDY)))
  defaults = config_lib.defaults_dict()
  # A loss option added since the file was saved counts as equal at the term's default.
  defaults["loss_options"] = {term: losses.option_defaults(term) for term in config.loss_options
                              if term in losses.names()}
  return files.json_diff(saved, config_lib.experiment_fields(config), defaults=defaults, elementwise=False)


def read_config(workdir: str, flag: str = "--workdir"):
  """The config a run saved in `workdir`.

  Raises:
    ValueError: no run there; files.CorruptFileError: a damaged config.json.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{flag}={workdir}: no {CONFIG_FILE} there, not a run directory of this tool")
  return config_lib.from_dict(files.read_json(path, _CONFIG_WHAT, _CONFIG_REMEDY))


def step_identity(exp: experiment_lib.Experiment, task_index: int) -> dict[str, Any]:
  """What makes task step `task_index`'s states usable as this run's teacher or resume point.

  The model definition, the classes of every head so far (in learning order)
  and the dataset: a state that differs in any of them is another
  experiment's, whatever its shapes.
  """
  names = exp.meta.class_names
  steps = exp.plan.steps[:task_index + 1]
  identity = {"dataset": exp.config.dataset.name, "model": json.loads(exp.config.model.to_json_best_effort()),
              "heads": task_index + 1, "classes_per_step": list(exp.plan.classes_per_step[:task_index + 1]),
              "step_classes": [[names[c] for c in st.new_classes] for st in steps]}
  states = methods.state_terms(exp.config)
  if states:  # only then: stateless runs keep the identity files they always had
    identity["method_state"] = {name: opts for name, _, opts in states}
  return identity


def check_step_identity(exp: experiment_lib.Experiment, workdir: str, task_index: int, what: str) -> bool:
  """`checkpointing.check_identity` against `step_identity` (model fields added later count at their defaults)."""
  return checkpointing.check_identity(workdir, task_index, step_identity(exp, task_index), what=what,
                                      defaults={"model": config_lib.defaults_dict()["model"]})


def check_checkpoints(exp: experiment_lib.Experiment, workdir: str) -> None:
  """Every task step's saved states in `workdir` must be this experiment's, and its done.json readable.

  Reading each finished step's record here, before anything is written,
  refuses a damaged one before the run changes the workdir.
  """
  for k in range(exp.num_steps):
    check_step_identity(exp, workdir, k, what="this run")
    if checkpointing.is_done(workdir, k):
      checkpointing.read_done(workdir, k)


def restore_step(exp: experiment_lib.Experiment, workdir: str, task_index: int, mesh) -> dict[str, Any]:
  """Step `task_index`'s final variables from `workdir`, identity-checked, replicated, read-only."""
  check_step_identity(exp, workdir, task_index,
                      what=f"as task step {task_index}'s model of this run (teacher / evaluation)")
  return checkpointing.restore_variables(workdir, task_index, exp.step(task_index).model,
                                         exp.config.input.crop_size, mesh)


def check_init_from(exp: experiment_lib.Experiment) -> str:
  """Checks that `config.init_from` names a finished run with the same base model; returns its workdir.

  Two step-0 models are interchangeable when data, architecture, input
  normalisation and step-0 classes agree (seed, batch size and schedule only
  shaped the other run's training).

  Raises:
    ValueError: not a workdir, another base model (the differences listed),
      or its step 0 has not finished.
  """
  src = exp.config.init_from
  other = read_config(src, flag="config.init_from")
  mine = config_lib.experiment_fields(exp.config)
  theirs = config_lib.experiment_fields(other)
  pick = lambda d: {"dataset": d.get("dataset"), "model": d.get("model"),
                    "input.mean": d.get("input", {}).get("mean"), "input.std": d.get("input", {}).get("std")}
  # A model or dataset field added since the other run was saved counts at its default.
  defaults = config_lib.defaults_dict()
  differences = files.json_diff(pick(theirs), pick(mine), elementwise=False,
                                defaults={"model": defaults["model"], "dataset": defaults["dataset"]})
  counts = exp.train_split.pixel_counts.sum(0) if exp.train_split.pixel_counts is not None else None
  other_plan = experiment_lib.plan_only(other, exp.meta, counts)
  if other_plan.steps[0].new_classes != exp.plan.steps[0].new_classes:
    differences.append(f"step-0 classes: {other_plan.steps[0].new_classes} vs {exp.plan.steps[0].new_classes}")
  ours_states = {name: opts for name, _, opts in methods.state_terms(exp.config)}
  if ours_states:  # the state accumulated over step 0 comes with the model: same terms, same options
    theirs_states = {name: opts for name, _, opts in methods.state_terms(other)}
    if theirs_states != ours_states:
      differences.append(f"state carried from step 0 (loss terms and options): {theirs_states or 'none'} vs "
                         f"{ours_states}; train step 0 with this method, or init_from a run of it")
  if differences:
    raise ValueError(f"config.init_from={src!r} is a different base model; differing (theirs vs ours):\n  "
                     + "\n  ".join(differences))
  if not checkpointing.is_done(src, 0):
    raise ValueError(f"config.init_from={src!r}: its step 0 has not finished")
  return src
