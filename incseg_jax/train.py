"""The loop over task steps: grow the model, train, checkpoint, evaluate, report.

`run(config, workdir)` is what `python -m incseg_jax.main` calls. For each task
step k it builds the student (step k-1's variables, copied bit for bit, plus
one new head), restores step k-1's final variables read-only as the teacher,
trains with periodic checkpoints, saves the final state, evaluates on the
validation split and marks the step done. Rerunning the same command resumes:
done steps are skipped (their metrics re-read), an unfinished step restarts
from its latest checkpoint and replays exactly the same batches. Nothing a
resumed run computes depends on process history: batches, augmentation and
dropout come from (seed, task step, train step), the new head's init from
(seed, task step), the teacher is the previous step's saved final state, and
the learning rate, optimizer state, BatchNorm statistics and skipped-batch
count are restored with the checkpoint. docs/reliability.md lists the
faults and bad inputs tested.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu import periodic_actions

from incseg_jax import checkpointing
from incseg_jax import config_lib
from incseg_jax import evaluation
from incseg_jax import experiment as experiment_lib
from incseg_jax import faults
from incseg_jax import losses as losses_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import preflight
from incseg_jax import reporting
from incseg_jax import sharding
from incseg_jax import train_step as ts
from incseg_jax.data import pipeline

CONFIG_FILE = "config.json"


def check_workdir(config, workdir: str, allow_change: bool = False, verify=None) -> None:
  """Saves the config beside the checkpoints, or refuses a different experiment.

  Args:
    config: this run's config.
    workdir: the run directory.
    allow_change: accept a config that differs from the saved one (the
      `--allow_config_change` flag): the saved config.json is kept as
      config.<n>.json (first unused n) and this one is saved. The checkpoints
      stay protected by their identity files (see `step_identity`).
    verify: optional check run after the comparison and before anything is
      written (`run` checks the checkpoints' identities there), so a refused
      run changes nothing.

  Raises:
    ValueError: the workdir holds a run whose config differs in a field that
      changes results (and `allow_change` is off); the message lists the
      differing fields.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  archive = None
  if os.path.exists(path):
    with open(path) as f:
      old_text = f.read()
    saved = config_lib.experiment_fields(config_lib.from_json(old_text))
    differences = config_lib.diff(saved, config_lib.experiment_fields(config), defaults=config_lib.defaults_dict())
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
      checkpointing.write_text_atomic(archive, old_text)
    checkpointing.write_text_atomic(path, config_lib.to_json(config))


def step_identity(exp: experiment_lib.Experiment, task_index: int) -> dict[str, Any]:
  """What makes task step `task_index`'s states usable as this run's teacher or resume point.

  The model definition, the classes of every head so far (in learning order)
  and the dataset: a state that differs in any of them is another
  experiment's, whatever its shapes.
  """
  names = exp.meta.class_names
  steps = exp.plan.steps[:task_index + 1]
  return {"dataset": exp.config.dataset.name, "model": json.loads(exp.config.model.to_json_best_effort()),
          "heads": task_index + 1, "classes_per_step": list(exp.plan.classes_per_step[:task_index + 1]),
          "step_classes": [[names[c] for c in st.new_classes] for st in steps]}


def check_step_identity(exp: experiment_lib.Experiment, workdir: str, task_index: int, what: str) -> bool:
  """`checkpointing.check_identity` against `step_identity` (model fields added later count at their defaults)."""
  return checkpointing.check_identity(workdir, task_index, step_identity(exp, task_index), what=what,
                                      defaults={"model": config_lib.defaults_dict()["model"]})


def abstract_variables(model, image_size: int) -> Any:
  """Shapes/dtypes of a model's variables, without allocating them."""
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_size))


def restore_teacher(exp: experiment_lib.Experiment, workdir: str, task_index: int, mesh) -> dict[str, Any]:
  """Step `task_index`'s final variables, replicated, read-only."""
  model = exp.model(task_index)
  abstract = abstract_variables(model, exp.config.input.crop_size)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                          abstract)
  check_step_identity(exp, workdir, task_index,
                      what=f"as task step {task_index}'s model of this run (teacher / evaluation)")
  ckpt = checkpointing.TaskCheckpointer(workdir, task_index, read_only=True)
  try:
    return ckpt.restore_variables(abstract)
  finally:
    ckpt.close()


def evaluate_step(exp: experiment_lib.Experiment, variables, task_index: int, mesh) -> dict[str, Any]:
  """Metrics of the model after task step `task_index` on the eval split."""
  step = exp.plan.steps[task_index]
  model = exp.model(task_index)
  cfg = exp.config
  eval_fn = ts.make_eval_step(model, step.num_channels, exp.plan.ignore_label)
  conf = np.zeros((step.num_channels, step.num_channels), np.int64)
  batches = pipeline.eval_batches(exp.eval_split, step.eval_lut, cfg.input, batch_size=cfg.eval_batch_size,
                                  bucket=cfg.get("eval_bucket", 0),
                                  ignore_label=exp.plan.ignore_label)
  for i, batch in enumerate(batches):
    conf += np.asarray(jax.device_get(eval_fn(variables, sharding.put_batch(batch, mesh))), np.int64)
    faults.point("eval", task_index, i + 1)
  return evaluation.segmentation_metrics(conf, old_channels=step.old_channels, new_channels=step.new_channels,
                                         class_names=exp.channel_names[:step.num_channels])


def _init_student(exp, task_index: int, teacher_vars, key, load_pretrained: bool = True) -> dict[str, Any]:
  """Fresh variables at step 0 (backbone from `config.pretrained` if set); later, the teacher's plus a new head."""
  model = exp.model(task_index)
  if teacher_vars is None:
    variables = models.init_variables(model, key, exp.config.input.crop_size)
    if load_pretrained and exp.config.get("pretrained"):
      from incseg_jax.models import pretrained  # pylint: disable=g-import-not-at-top
      variables = pretrained.load_into(variables, exp.config.pretrained, exp.config.model)
      logging.info("step 0: backbone initialised from %s", exp.config.pretrained)
    return variables
  variables = models.add_head(model, jax.device_get(teacher_vars), key, exp.config.input.crop_size)
  if exp.method.head_init is not None:
    variables = exp.method.head_init(teacher_vars, variables, exp.plan.steps[task_index])
  return variables


def _import_base_model(exp, workdir: str, mesh) -> dict[str, Any]:
  """Step-0 variables from another run (`config.init_from`), checked to match."""
  src = exp.config.init_from
  path = os.path.join(src, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"config.init_from={src!r}: no {CONFIG_FILE} there (not a workdir of this tool)")
  with open(path) as f:
    other = config_lib.from_json(f.read())
  # What makes two step-0 models interchangeable: same data, architecture and
  # input normalisation (seed, batch size and schedule only shaped the other
  # run's training; its step-0 classes are compared below).
  mine = config_lib.experiment_fields(exp.config)
  theirs = config_lib.experiment_fields(other)
  pick = lambda d: {"dataset": d.get("dataset"), "model": d.get("model"),
                    "input.mean": d.get("input", {}).get("mean"), "input.std": d.get("input", {}).get("std")}
  differences = config_lib.diff(pick(theirs), pick(mine))
  counts = exp.train_split.pixel_counts.sum(0) if exp.train_split.pixel_counts is not None else None
  other_plan = experiment_lib.plan_only(other, exp.meta, counts)
  if other_plan.steps[0].new_classes != exp.plan.steps[0].new_classes:
    differences.append(f"step-0 classes: {other_plan.steps[0].new_classes} vs {exp.plan.steps[0].new_classes}")
  if differences:
    raise ValueError(f"config.init_from={src!r} is a different base model; differing (theirs vs ours):\n  "
                     + "\n  ".join(differences))
  if not checkpointing.is_done(src, 0):
    raise ValueError(f"config.init_from={src!r}: its step 0 has not finished")
  logging.info("step 0: reusing the base model of %s", src)
  return restore_teacher(exp, src, 0, mesh)


def _prepare(exp, task_index: int, teacher, teacher_vars, task, mesh) -> dict[str, Any]:
  """Runs the method's `prepare` hook over one epoch of the step's training data."""
  cfg = exp.config
  forward = ts.make_teacher_forward(teacher)
  epoch = -(-len(exp.step_indices[task_index]) // cfg.input.batch_size)

  def batches():
    return pipeline.train_batches(exp.train_split, exp.step_indices[task_index], exp.plan.steps[task_index].train_lut,
                                  cfg.input, seed=cfg.seed, task_index=task_index, start_step=0, num_steps=epoch,
                                  ignore_label=exp.plan.ignore_label)

  ctx = methods.PrepareContext(teacher_forward=lambda images: forward(teacher_vars, sharding.put_batch(
      {"image": images}, mesh)["image"]), batches=batches, task=task, options=cfg.loss_options.to_dict(),
                               quirks=cfg.quirks.to_dict())
  return dict(exp.method.prepare(ctx))


class NonFiniteGuard:
  """Stops the run at a train step whose loss or gradient was not finite (`config.nonfinite="stop"`).

  The jitted step already left the state unchanged for such a batch and
  counted it (see train_step); this only decides to stop. It reads the flag
  of step t after step t+1 has been dispatched, so the device never waits
  for the host, and reads it at once before a checkpoint, so no checkpoint
  ever follows a bad step.
  """

  def __init__(self, mode: str, task_index: int, ckpt: checkpointing.TaskCheckpointer):
    self.active = mode == "stop"
    self.task_index = task_index
    self.ckpt = ckpt
    self._pending = None  # (train step, metrics) not yet checked

  def push(self, done: int, metrics) -> None:
    """Checks the previous step's flag and queues this one's."""
    if self.active:
      self.flush()
      self._pending = (done, metrics)

  def flush(self) -> None:
    """Checks the queued step now (blocks until it finished)."""
    if self._pending is None:
      return
    done, metrics = self._pending
    self._pending = None
    if not bool(jax.device_get(metrics["finite"])):
      raise FloatingPointError(nonfinite_message(jax.device_get(metrics), self.task_index, done,
                                                 self.ckpt))


def nonfinite_message(metrics: dict[str, Any], task_index: int, done: int, ckpt) -> str:
  """Names the non-finite loss term(s), or the gradient, and what was kept."""
  terms = [k[len("loss_"):] for k, v in metrics.items() if k.startswith("loss_") and not np.all(np.isfinite(v))]
  if not terms and not np.isfinite(metrics["loss"]):
    terms = ["total loss"]
  what = f"loss term(s) {', '.join(terms)}" if terms else "gradient (all loss terms finite)"
  values = {k: float(v) for k, v in metrics.items() if k.startswith("loss") or k == "grad_norm"}
  latest = ckpt.latest_step()
  kept = (f"the last good checkpoint (train step {latest}) is kept in {ckpt.directory}" if latest is not None
          else "no checkpoint of this task step was written")
  return (f"task step {task_index}, train step {done}: non-finite {what} ({values}); the run stopped and {kept}. "
          "Lower the learning rate, check the data, or pass --config.nonfinite=skip to skip such batches.")


def train_task_step(exp, workdir: str, task_index: int, teacher_vars, mesh, writer,
                    global_offset: int) -> tuple[dict[str, Any], int]:
  """Trains (or resumes) one task step.

  Returns:
    (its final variables, the number of batches skipped as non-finite).

  Raises:
    FloatingPointError: a non-finite loss or gradient with `config.nonfinite="stop"`.
    checkpointing.CheckpointMismatchError: the step's checkpoints are another
      experiment's.
  """
  cfg = exp.config
  num_steps = exp.num_train_steps(task_index)
  base_key = jax.random.fold_in(jax.random.key(cfg.seed), task_index)
  student = exp.model(task_index)
  teacher = exp.model(task_index - 1) if task_index > 0 else None
  if not check_step_identity(exp, workdir, task_index, what="a resume of this run"):
    if jax.process_index() == 0:
      checkpointing.write_identity(workdir, task_index, step_identity(exp, task_index))
  ckpt = checkpointing.TaskCheckpointer(workdir, task_index)
  resuming = ckpt.latest_step() is not None
  # Pretrained weights only matter for a fresh step 0: a resume restores its
  # state and init_from imports a whole model over them.
  variables = _init_student(exp, task_index, teacher_vars, jax.random.fold_in(base_key, 1 << 30),
                            load_pretrained=not resuming and not cfg.init_from)
  frozen = exp.frozen_prefixes if task_index > 0 else ()
  if cfg.model.bn_frozen:  # frozen BatchNorm: statistics (in the model) and scale/bias (here)
    frozen += models.batchnorm_prefixes(variables)
  schedule = ts.lr_schedule(exp.learning_rate(task_index), cfg.schedule.end_lr, cfg.schedule.power, num_steps)
  tx = ts.make_optimizer(cfg.optim, schedule, variables["params"], frozen)
  state = ts.TrainState(step=np.int32(0), params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                        opt_state=tx.init(variables["params"]), skipped=np.int32(0))
  state = sharding.put_replicated(state, mesh)

  start = 0
  if resuming:
    state = ckpt.restore_state(checkpointing.abstract_like(state))
    start = int(state.step)
    print(f"task step {task_index}: resuming at train step {start}/{num_steps} (checkpoint in {ckpt.directory})",
          flush=True)

  if cfg.init_from and task_index == 0:
    if start < num_steps:
      imported = _import_base_model(exp, workdir, mesh)
      state = state.replace(params=imported["params"], batch_stats=imported["batch_stats"],
                            step=sharding.put_replicated(np.int32(num_steps), mesh))
      ckpt.save(num_steps, state)
    ckpt.close()
    return {"params": state.params, "batch_stats": state.batch_stats}, 0

  if start < num_steps:
    state = _train_loop(exp, task_index, state, teacher_vars, ckpt, start, writer, global_offset,
                        ts.make_train_step(student, teacher, preflight.active_terms(cfg, task_index),
                                           _task_info(exp, task_index), tx, schedule, frozen, cfg.quirks.to_dict()),
                        base_key, mesh)
  if ckpt.latest_step() != num_steps:
    ckpt.save(num_steps, state)
  ckpt.close()
  return {"params": state.params, "batch_stats": state.batch_stats}, int(jax.device_get(state.skipped))


def _task_info(exp, task_index: int) -> losses_lib.TaskInfo:
  step = exp.plan.steps[task_index]
  return losses_lib.TaskInfo(index=task_index, num_channels=step.num_channels, old_channels=step.old_channels,
                             new_channels=step.new_channels, ignore_label=exp.plan.ignore_label)


def _train_loop(exp, task_index: int, state, teacher_vars, ckpt, start: int, writer, global_offset: int, step_fn,
                base_key, mesh):
  """Train steps [start, num_steps) with logging, periodic checkpoints and the non-finite guard."""
  cfg = exp.config
  num_steps = exp.num_train_steps(task_index)
  teacher = exp.model(task_index - 1) if task_index > 0 else None
  batches = pipeline.train_batches(exp.train_split, exp.step_indices[task_index],
                                   exp.plan.steps[task_index].train_lut, cfg.input, seed=cfg.seed,
                                   task_index=task_index, start_step=start, num_steps=num_steps,
                                   ignore_label=exp.plan.ignore_label)
  extras = None
  if exp.method.prepare is not None and task_index > 0:
    extras = sharding.put_replicated(_prepare(exp, task_index, teacher, teacher_vars, _task_info(exp, task_index),
                                              mesh), mesh)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_secs=cfg.progress_every_secs)
  guard = NonFiniteGuard(cfg.nonfinite, task_index, ckpt)
  t0, last = time.time(), start
  for step in range(start, num_steps):
    state, metrics = step_fn(state, teacher_vars, sharding.put_batch(next(batches), mesh), base_key, extras)
    done = step + 1
    guard.push(done, metrics)
    faults.point("train", task_index, done)
    report(done)
    if done % cfg.log_every == 0 or done == num_steps:
      guard.flush()
      metrics = jax.device_get(metrics)
      writer.write_scalars(global_offset + done, {f"train/{k}": v for k, v in metrics.items() if k != "finite"})
      rate = (done - last) / max(time.time() - t0, 1e-9)
      t0, last = time.time(), done
      eta = (num_steps - done) / max(rate, 1e-9)
      skipped = f"  skipped {int(metrics['skipped_batches'])}" if metrics["skipped_batches"] else ""
      print(f"  task {task_index} step {done}/{num_steps}  loss {float(metrics['loss']):.4f}  "
            f"lr {float(metrics['lr']):.2e}  {rate:.1f} steps/s  ETA {eta:.0f}s{skipped}", flush=True)
    if done % cfg.checkpoint_every == 0 and done < num_steps:
      guard.flush()
      ckpt.save(done, state)
  guard.flush()
  return state


def run(config, workdir: str, allow_config_change: bool = False) -> dict[str, Any]:
  """Runs (or resumes) every task step of the experiment in `config`.

  Args:
    config: the experiment config.
    workdir: where checkpoints, logs and results go.
    allow_config_change: continue a workdir saved under another config (see
      `check_workdir`).

  Returns:
    The results dict also written to `<workdir>/results.json`.
  """
  preflight.check_values(config)
  exp = experiment_lib.build(config)
  preflight.check_loss_terms(exp)

  def check_checkpoints():
    for k in range(len(exp.plan.steps)):
      check_step_identity(exp, workdir, k, what="this run")

  check_workdir(config, workdir, allow_config_change, verify=check_checkpoints)
  mesh = sharding.make_mesh()
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  print(exp.plan.describe(exp.meta.class_names), flush=True)
  for step, ix in zip(exp.plan.steps, exp.step_indices):
    print(f"task step {step.index}: {len(ix)} training images, {exp.num_train_steps(step.index)} train steps",
          flush=True)
  records = []
  teacher_vars = None
  offset = 0
  for k in range(len(exp.plan.steps)):
    t0 = time.time()
    if checkpointing.is_done(workdir, k):
      record = checkpointing.read_done(workdir, k)
      print(f"task step {k}: already done, skipping", flush=True)
      variables = restore_teacher(exp, workdir, k, mesh) if k + 1 < len(exp.plan.steps) else None
    else:
      variables, skipped = train_task_step(exp, workdir, k, teacher_vars, mesh, writer, offset)
      metrics = evaluate_step(exp, variables, k, mesh)
      record = reporting.step_record(exp, k, metrics, train_seconds=time.time() - t0, skipped_batches=skipped)
      writer.write_scalars(offset + exp.num_train_steps(k), {
          f"eval/{m}": v for m, v in metrics.items() if m.startswith("miou") and v is not None})
      if jax.process_index() == 0:
        checkpointing.mark_done(workdir, k, record)
      faults.point("between", k)
    records.append(record)
    print(reporting.step_line(record), flush=True)
    teacher_vars = variables
    offset += exp.num_train_steps(k)
  writer.flush()
  results = reporting.results(exp, records)
  if jax.process_index() == 0:
    reporting.write_all(workdir, results)
  print(reporting.final_table(results), flush=True)
  return results
