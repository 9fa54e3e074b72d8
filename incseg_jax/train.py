"""The loop over task steps: grow the model, train, checkpoint, evaluate, report.

`run(config, workdir)` is what `python -m incseg_jax.main` calls. For each task
step k it builds the student (step k-1's variables, copied bit for bit, plus
one new head), restores step k-1's final variables read-only as the teacher,
trains with periodic checkpoints, saves the final state, evaluates on the
validation split and marks the step done. Rerunning the same command resumes:
done steps are skipped (their metrics re-read), an unfinished step restarts
from its latest checkpoint and replays exactly the same batches.
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
from incseg_jax import losses as losses_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import reporting
from incseg_jax import sharding
from incseg_jax import train_step as ts
from incseg_jax.data import pipeline

CONFIG_FILE = "config.json"


def check_workdir(config, workdir: str) -> None:
  """Saves the config beside the checkpoints, or refuses a different experiment.

  Raises:
    ValueError: the workdir holds a run whose config differs in a field that
      changes results; the message lists the differing fields.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = config_lib.experiment_fields(config_lib.from_json(f.read()))
    differences = config_lib.diff(saved, config_lib.experiment_fields(config), defaults=config_lib.defaults_dict())
    if differences:
      raise ValueError(f"workdir {workdir} holds a different experiment ({path}); differing fields "
                       f"(saved vs now):\n  " + "\n  ".join(differences) +
                       "\nUse a new --workdir, or delete this one to start over.")
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      f.write(config_lib.to_json(config))
    os.replace(path + ".tmp", path)


def abstract_variables(model, image_size: int) -> Any:
  """Shapes/dtypes of a model's variables, without allocating them."""
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_size))


def restore_teacher(exp: experiment_lib.Experiment, workdir: str, task_index: int, mesh) -> dict[str, Any]:
  """Step `task_index`'s final variables, replicated, read-only."""
  model = exp.model(task_index)
  abstract = abstract_variables(model, exp.config.input.crop_size)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                          abstract)
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
                                  ignore_label=exp.plan.ignore_label)
  for batch in batches:
    conf += np.asarray(jax.device_get(eval_fn(variables, sharding.put_batch(batch, mesh))), np.int64)
  return evaluation.segmentation_metrics(conf, old_channels=step.old_channels, new_channels=step.new_channels,
                                         class_names=exp.channel_names[:step.num_channels])


def _init_student(exp, task_index: int, teacher_vars, key) -> dict[str, Any]:
  """Fresh variables at step 0; later, the teacher's (host copies) plus a new head."""
  model = exp.model(task_index)
  if teacher_vars is None:
    return models.init_variables(model, key, exp.config.input.crop_size)
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


def train_task_step(exp, workdir: str, task_index: int, teacher_vars, mesh, writer, global_offset: int):
  """Trains (or resumes) one task step; returns its final variables."""
  cfg = exp.config
  step_info = exp.plan.steps[task_index]
  num_steps = exp.num_train_steps(task_index)
  base_key = jax.random.fold_in(jax.random.key(cfg.seed), task_index)
  student = exp.model(task_index)
  teacher = exp.model(task_index - 1) if task_index > 0 else None
  variables = _init_student(exp, task_index, teacher_vars, jax.random.fold_in(base_key, 1 << 30))
  frozen = exp.frozen_prefixes if task_index > 0 else ()
  if cfg.model.bn_frozen:  # frozen BatchNorm: statistics (in the model) and scale/bias (here)
    frozen += models.batchnorm_prefixes(variables)
  schedule = ts.lr_schedule(exp.learning_rate(task_index), cfg.schedule.end_lr, cfg.schedule.power, num_steps)
  tx = ts.make_optimizer(cfg.optim, schedule, variables["params"], frozen)
  state = ts.TrainState(step=np.int32(0), params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                        opt_state=tx.init(variables["params"]))
  state = sharding.put_replicated(state, mesh)

  ckpt = checkpointing.TaskCheckpointer(workdir, task_index)
  start = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore_state(checkpointing.abstract_like(state))
    start = int(state.step)
    logging.info("task step %d: resuming at train step %d/%d", task_index, start, num_steps)

  if cfg.init_from and task_index == 0:
    if start < num_steps:
      imported = _import_base_model(exp, workdir, mesh)
      state = state.replace(params=imported["params"], batch_stats=imported["batch_stats"],
                            step=sharding.put_replicated(np.int32(num_steps), mesh))
      ckpt.save(num_steps, state)
    ckpt.close()
    return {"params": state.params, "batch_stats": state.batch_stats}

  task = losses_lib.TaskInfo(index=task_index, num_channels=step_info.num_channels,
                             old_channels=step_info.old_channels, new_channels=step_info.new_channels,
                             ignore_label=exp.plan.ignore_label)
  terms = [(name, float(w), dict(cfg.loss_options.get(name, {})))
           for name, w in cfg.losses.items() if w and (task_index > 0 or not losses_lib.needs_teacher(name))]
  step_fn = ts.make_train_step(student, teacher, terms, task, tx, schedule, frozen, cfg.quirks.to_dict())
  batches = pipeline.train_batches(exp.train_split, exp.step_indices[task_index], step_info.train_lut, cfg.input,
                                   seed=cfg.seed, task_index=task_index, start_step=start, num_steps=num_steps,
                                   ignore_label=exp.plan.ignore_label)
  extras = None
  if exp.method.prepare is not None and task_index > 0:
    extras = sharding.put_replicated(_prepare(exp, task_index, teacher, teacher_vars, task, mesh), mesh)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_secs=cfg.progress_every_secs)
  t0, last = time.time(), start
  for step in range(start, num_steps):
    state, metrics = step_fn(state, teacher_vars, sharding.put_batch(next(batches), mesh), base_key, extras)
    done = step + 1
    report(done)
    if done % cfg.log_every == 0 or done == num_steps:
      metrics = jax.device_get(metrics)
      bad = [k for k, v in metrics.items() if not np.isfinite(v)]
      if bad:
        raise FloatingPointError(f"task step {task_index}, train step {done}: non-finite {', '.join(bad)} "
                                 f"({ {k: float(v) for k, v in metrics.items()} }); last good checkpoint kept "
                                 f"in {ckpt.directory}")
      writer.write_scalars(global_offset + done, {f"train/{k}": v for k, v in metrics.items()})
      rate = (done - last) / max(time.time() - t0, 1e-9)
      t0, last = time.time(), done
      eta = (num_steps - done) / max(rate, 1e-9)
      print(f"  task {task_index} step {done}/{num_steps}  loss {float(metrics['loss']):.4f}  "
            f"lr {float(metrics['lr']):.2e}  {rate:.1f} steps/s  ETA {eta:.0f}s", flush=True)
    if done % cfg.checkpoint_every == 0 and done < num_steps:
      ckpt.save(done, state)
  if ckpt.latest_step() != num_steps:
    ckpt.save(num_steps, state)
  ckpt.close()
  return {"params": state.params, "batch_stats": state.batch_stats}


def run(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every task step of the experiment in `config`.

  Returns:
    The results dict also written to `<workdir>/results.json`.
  """
  exp = experiment_lib.build(config)
  check_workdir(config, workdir)
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
      variables = train_task_step(exp, workdir, k, teacher_vars, mesh, writer, offset)
      metrics = evaluate_step(exp, variables, k, mesh)
      record = reporting.step_record(exp, k, metrics, train_seconds=time.time() - t0)
      writer.write_scalars(offset + exp.num_train_steps(k), {
          f"eval/{m}": v for m, v in metrics.items() if m.startswith("miou") and v is not None})
      if jax.process_index() == 0:
        checkpointing.mark_done(workdir, k, record)
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
