"""The loop over task steps: build the step's student, train, checkpoint, evaluate, report.

`run(config, workdir)` is what `python -m incseg_jax.main` calls. For each task
step k (its facts in `experiment.StepSpec`) it builds the student (step k-1's
variables, copied bit for bit, plus one new head), restores step k-1's final
variables read-only as the teacher, trains with periodic checkpoints, saves
the final state, evaluates on the evaluation split and marks the step done.
Rerunning the same command resumes: done steps are skipped (their metrics
re-read), an unfinished step restarts from its latest checkpoint and replays
exactly the same batches. Nothing a resumed run computes depends on process
history: batches, augmentation and dropout come from (seed, task step, train
step), the new head's init from (seed, task step), the teacher is the
previous step's saved final state, and the learning rate, optimizer state,
BatchNorm statistics and skipped-batch count are restored with the
checkpoint. docs/reliability.md lists the faults and bad inputs tested.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np

from incseg_jax import checkpointing
from incseg_jax import distributed
from incseg_jax import evaluation
from incseg_jax import experiment as experiment_lib
from incseg_jax import hooks as hooks_lib
from incseg_jax import memory as memory_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import replay as replay_lib
from incseg_jax import reporting
from incseg_jax import sharding
from incseg_jax import train_step as ts
from incseg_jax import validate
from incseg_jax import workdir as workdir_lib
from incseg_jax.losses import state as state_lib
from incseg_jax.models import pretrained


def run(config, workdir: str, allow_config_change: bool = False,
        hooks: hooks_lib.Hooks = hooks_lib.NONE, config_checked: bool = False) -> dict[str, Any]:
  """Runs (or resumes) every task step of the experiment in `config`.

  Args:
    config: the experiment config.
    workdir: where checkpoints, logs and results go.
    allow_config_change: continue a workdir saved under another config (see
      `workdir.check_workdir`).
    hooks: observation points for tests (see incseg_jax/hooks.py).
    config_checked: the caller has run `validate.config(config)` already
      (main.py does, before TensorFlow loads), so it is not run twice: it
      reads the whole pretrained weight file.

  Returns:
    The results dict also written to `<workdir>/results.json`.

  Raises:
    files.LockedError: another process is running in `workdir`.
    ValueError: a bad config, workdir or checkpoint; nothing has been
      written to `workdir` then (every check precedes the first write).
  """
  # Held from the start, so a second run on this workdir is refused before it
  # builds anything; released on return, on an exception, and by the kernel
  # when the process dies.
  with workdir_lib.locked(workdir):
    return _run(config, workdir, allow_config_change, hooks, config_checked)


def _run(config, workdir: str, allow_config_change: bool, hooks: hooks_lib.Hooks,
         config_checked: bool) -> dict[str, Any]:
  """`run` with the workdir held."""
  if not config_checked:
    validate.config(config)
  num_images = evaluation.tb_image_count(config)  # a bad value is refused before anything is written
  exp = experiment_lib.build(config)
  validate.experiment(exp)

  def verify():  # everything that can refuse the run, before check_workdir writes config.json
    distributed.check_topology(workdir, bool((config.get("distributed") or {}).get("allow_resize")))
    workdir_lib.check_checkpoints(exp, workdir)
    if config.init_from and not checkpointing.is_done(workdir, 0):
      workdir_lib.check_init_from(exp)

  workdir_lib.check_workdir(config, workdir, allow_config_change, verify=verify)
  distributed.record_topology(workdir)
  mesh = sharding.make_mesh()
  # clu's writers import TensorFlow: imported here, not with this module, which the train-step benchmark
  # imports on machines that have JAX but no TensorFlow (docs/benchmarks.md, "On a GPU").
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  # Decoded once: the same images at every step's evaluation, so TensorBoard shows how their predictions change.
  shown = evaluation.fixed_images(exp.eval_split, num_images, config.input) if num_images else None
  print(exp.plan.describe(exp.meta.class_names), flush=True)
  for k in range(exp.num_steps):
    spec = exp.step(k)
    print(f"task step {k}: {len(spec.indices)} training images, {spec.num_train_steps} train steps", flush=True)
  records = []
  teacher_vars = None
  method_states = None  # the previous step's final method states (host arrays), when its terms carry state
  offset = 0
  for k in range(exp.num_steps):
    spec = exp.step(k)
    t0 = time.time()
    if checkpointing.is_done(workdir, k):
      record = checkpointing.read_done(workdir, k)
      print(f"task step {k}: already done, skipping", flush=True)
      variables = workdir_lib.restore_step(exp, workdir, k, mesh) if k + 1 < exp.num_steps else None
      if spec.states and k + 1 < exp.num_steps:
        method_states = checkpointing.restore_method_state(workdir, k, [name for name, _, _ in spec.states])
    else:
      variables, skipped, method_states = train_task_step(exp, spec, workdir, teacher_vars, mesh, writer, offset,
                                                          hooks, method_states)
      metrics = evaluation.evaluate_step(exp, spec, variables, mesh, hooks)
      record = reporting.step_record(exp, spec, metrics, train_seconds=time.time() - t0, skipped_batches=skipped)
      writer.write_scalars(offset + spec.num_train_steps, {
          f"eval/{m}": v for m, v in metrics.items() if m.startswith("miou") and v is not None})
      if jax.process_index() == 0:
        checkpointing.mark_done(workdir, k, record)
      if shown is not None:  # after the step is recorded, from the same variables (only read)
        writer.write_images(offset + spec.num_train_steps,
                            evaluation.image_summaries(exp, spec, variables, shown, mesh))
      hooks.after_task_step(k)
    records.append(record)
    print(reporting.step_line(record), flush=True)
    teacher_vars = variables
    offset += spec.num_train_steps
  writer.flush()
  results = reporting.results(exp, records)
  if jax.process_index() == 0:
    reporting.write_all(workdir, results)
  print(reporting.final_table(results), flush=True)
  return results


def train_task_step(exp: experiment_lib.Experiment, spec: experiment_lib.StepSpec, workdir: str, teacher_vars,
                    mesh, writer, global_offset: int, hooks: hooks_lib.Hooks = hooks_lib.NONE,
                    previous_states: dict[str, Any] | None = None) -> tuple[dict[str, Any], int, Any]:
  """Trains (or resumes) one task step.

  Args:
    exp, spec, workdir, teacher_vars, mesh, writer, global_offset, hooks: as in `run`.
    previous_states: the previous step's final method states (term name ->
      host state tree) when the step's terms carry state (`spec.states`).

  Returns:
    (its final variables, the number of batches skipped as non-finite, its
    final method states as host arrays or None).

  Raises:
    FloatingPointError: a non-finite loss or gradient with `config.nonfinite="stop"`.
    checkpointing.CheckpointMismatchError: the step's checkpoints are another
      experiment's.
  """
  began = time.perf_counter()
  cfg = exp.config
  k, num_steps = spec.index, spec.num_train_steps
  base_key = jax.random.fold_in(jax.random.key(cfg.seed), k)
  if not workdir_lib.check_step_identity(exp, workdir, k, what="a resume of this run"):
    if jax.process_index() == 0:
      checkpointing.write_identity(workdir, k, workdir_lib.step_identity(exp, k))
  ckpt = checkpointing.TaskCheckpointer(workdir, k, hooks=hooks)
  resuming = ckpt.latest_step() is not None
  # Pretrained weights only matter for a fresh step 0: a resume restores its
  # state and init_from imports a whole model over them.
  variables = init_student(exp, spec, teacher_vars, jax.random.fold_in(base_key, 1 << 30),
                           load_pretrained=not resuming and not cfg.init_from)
  schedule = ts.lr_schedule(spec.learning_rate, cfg.schedule.end_lr, cfg.schedule.power, num_steps)
  tx = ts.make_optimizer(cfg.optim, schedule, variables["params"], spec.frozen, spec.lr_scales)
  method_state = init_states(spec, variables["params"], teacher_vars, previous_states) if spec.states else None
  state = ts.TrainState(step=np.int32(0), params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                        opt_state=tx.init(variables["params"]), skipped=np.int32(0), method_state=method_state)
  state = sharding.put_replicated(state, mesh)

  start = 0
  if resuming:
    state = _restore_for_resume(exp, spec, ckpt, state, mesh)
    start = int(state.step)
    print(f"task step {k}: resuming at train step {start}/{num_steps} (checkpoint in {ckpt.directory})", flush=True)

  if cfg.init_from and k == 0:
    if start < num_steps:
      src = workdir_lib.check_init_from(exp)
      logging.info("step 0: reusing the base model of %s", src)
      imported = workdir_lib.restore_step(exp, src, 0, mesh)
      state = state.replace(params=imported["params"], batch_stats=imported["batch_stats"],
                            step=sharding.put_replicated(np.int32(num_steps), mesh))
      if spec.states:  # the state the source accumulated over its step 0 (check_init_from: same terms and options)
        state = state.replace(method_state=sharding.put_replicated(
            checkpointing.restore_method_state(src, 0, [name for name, _, _ in spec.states]), mesh))
      ckpt.save(num_steps, state)
    ckpt.close()
    return {"params": state.params, "batch_stats": state.batch_stats}, 0, _host_states(state)

  if k > 0 and exp.memory_for(k):
    # The memory is part of the step's record: a resume replays the one saved when the step began.
    saved = memory_lib.load(checkpointing.task_dir(workdir, k))
    if saved is not None:
      exp.set_memory(k, saved)
    elif jax.process_index() == 0:
      memory_lib.save(checkpointing.task_dir(workdir, k), exp.memory_for(k))
  if k > 0 and exp.replay is not None:
    prepare_replay_labels(exp, k, workdir, teacher_vars, mesh)
  if start < num_steps:
    replay = None
    if exp.replay_for(spec) is not None:
      replay = {"label": cfg.replay.label, "mix_labels": bool(cfg.replay.mix_labels),
                "prelabelled": cfg.replay.get("labeller", "previous") == "learned"}
    step_fn = ts.make_train_step(spec.train_model, spec.teacher_model, spec.terms, spec.info, tx, schedule,
                                 spec.frozen, spec.states, replay=replay)
    extras = None
    if exp.method.prepare is not None and k > 0:
      extras = sharding.put_replicated(_prepare(exp, spec, teacher_vars, mesh), mesh)
    state = _train_loop(exp, spec, state, teacher_vars, extras, ckpt, start, writer, global_offset, step_fn,
                        base_key, mesh, hooks, began)
  if ckpt.latest_step() != num_steps:
    if exp.method.train_variant is not None:
      # The step's final checkpoint is the merged (plain) model: the evaluation,
      # the next teacher and `init_from` never see the variant, and a resume
      # after this save restores it as it is (`_restore_for_resume`).
      merged = exp.method.train_variant.merge(
          jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
      state = state.replace(params=sharding.put_replicated(merged["params"], mesh),
                            batch_stats=sharding.put_replicated(merged["batch_stats"], mesh))
    if exp.method.fuse is not None and k > 0:
      # The step's final checkpoint is the fused model (EWF), so a resume after
      # this save restores it as it is and never fuses twice.
      fused = exp.method.fuse(teacher_vars, {"params": state.params, "batch_stats": state.batch_stats}, spec.task,
                              dict(cfg.get("ewf") or {}))
      state = state.replace(params=sharding.put_replicated(fused["params"], mesh),
                            batch_stats=sharding.put_replicated(fused["batch_stats"], mesh))
    ckpt.save(num_steps, state)
  ckpt.close()
  return ({"params": state.params, "batch_stats": state.batch_stats}, int(jax.device_get(state.skipped)),
          _host_states(state))


def _restore_for_resume(exp: experiment_lib.Experiment, spec: experiment_lib.StepSpec,
                        ckpt: checkpointing.TaskCheckpointer, state: ts.TrainState, mesh) -> ts.TrainState:
  """The state a resumed step continues from: its latest intact checkpoint, restored into `state`'s shardings.

  With a method's `TrainVariant` the step's final checkpoint holds the merged
  (plain) model beside the trained model's optimizer state, so it is restored
  with the plain model's shapes; the periodic ones hold the trained model. A
  damaged final checkpoint falls back to the latest intact periodic one.
  """
  abstract = checkpointing.abstract_like(state)
  if exp.method.train_variant is not None and ckpt.latest_step() == spec.num_train_steps:
    plain = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                         models.abstract_variables(spec.model, exp.config.input.crop_size))
    try:
      return ckpt.restore_state(abstract.replace(params=plain["params"], batch_stats=plain["batch_stats"]),
                                spec.num_train_steps)
    except checkpointing.ChecksumError:
      pass  # restore_latest_intact sets it aside and takes the latest intact one before it
  return ckpt.restore_latest_intact(abstract)


def prepare_replay_labels(exp: experiment_lib.Experiment, k: int, workdir: str, teacher_vars, mesh) -> None:
  """With `config.replay.labeller="learned"`: the labels of the replay images of every class old at step `k`.

  The images of the classes step s learned are labelled once, by step s's
  final model (`replay.label_images`), and kept in
  `<workdir>/replay_labels/task_<s>/`; a later step, a resume or another
  process reads them back. Step k - 1's model is the teacher at hand; an
  earlier step's missing labels (e.g. a run continued from `init_from`) come
  from its restored checkpoint.
  """
  cfg = exp.config
  if cfg.replay.get("labeller", "previous") != "learned":
    return
  for s in range(k):
    step = exp.plan.steps[s]
    idx, channels = exp.replay.select(dict(zip(step.new_classes, step.new_channels)))
    if not len(idx) or all(exp.replay.labels[i] is not None for i in idx):
      continue
    names = [replay_lib.label_file(exp.replay.paths[i]) for i in idx]
    directory = replay_lib.labels_dir(workdir, s)
    labels = replay_lib.load_labels(directory, names)
    if labels is None:
      variables = teacher_vars if s == k - 1 else workdir_lib.restore_step(exp, workdir, s, mesh)
      model = exp.step(s).model
      forward = jax.jit(lambda v, x, m: models.prediction_scores(model.apply(v, x, train=False, valid=m)))
      print(f"task step {k}: labelling {len(idx)} replay images of step {s}'s classes with its model", flush=True)
      labels = replay_lib.label_images(lambda x, m: forward(variables, x, m), exp.replay.images[idx], channels,
                                       mode=cfg.replay.label, input_cfg=cfg.input)
      if jax.process_index() == 0:
        replay_lib.save_labels(directory, names, labels)
    for i, label in zip(idx, labels):
      exp.replay.labels[i] = label


def init_states(spec: experiment_lib.StepSpec, params, teacher_vars, previous: dict[str, Any] | None) -> dict[str, Any]:
  """Each stateful term's state at the start of the step (`losses.state.StateRule.init`), as host float32 arrays.

  Raises:
    ValueError: a step after 0 without the previous step's states (a bug in the caller).
  """
  if spec.index > 0 and previous is None:
    raise ValueError(f"task step {spec.index}: the previous step's method states are missing")
  host_params = jax.device_get(params)
  teacher_params = jax.device_get(teacher_vars["params"]) if teacher_vars is not None else None
  out = {}
  for name, rule, opts in spec.states:
    ctx = state_lib.StateContext(params=host_params, teacher_params=teacher_params,
                                 previous=None if spec.index == 0 else previous[name], task=spec.info, options=opts)
    out[name] = state_lib.copy_tree(rule.init(ctx))
  return out


def _host_states(state: ts.TrainState) -> Any:
  return None if state.method_state is None else jax.device_get(state.method_state)


def init_student(exp: experiment_lib.Experiment, spec: experiment_lib.StepSpec, teacher_vars, key,
                 load_pretrained: bool = True) -> dict[str, Any]:
  """The student's starting variables, `spec.train_model`'s.

  Fresh variables at step 0 (backbone from `config.pretrained` if set); later,
  the teacher's plus a new head (and the method's head init). With a method's
  `TrainVariant` (RCIL) these plain variables are then expanded to the trained
  model's.
  """
  cfg = exp.config
  if teacher_vars is None:
    variables = models.init_variables(spec.model, key, cfg.input.crop_size)
    if load_pretrained and cfg.get("pretrained"):
      variables = pretrained.load_into(variables, cfg.pretrained, cfg.model, cfg.dataset.data_dir or None)
      logging.info("step 0: backbone initialised from %s", cfg.pretrained)
  else:
    variables = models.add_head(spec.model, jax.device_get(teacher_vars), key, cfg.input.crop_size)
    if exp.method.head_init is not None:
      variables = exp.method.head_init(teacher_vars, variables, spec.task)
  if exp.method.train_variant is not None:
    variables = exp.method.train_variant.expand(
        variables, models.abstract_variables(spec.train_model, cfg.input.crop_size))
  return variables


def _prepare(exp: experiment_lib.Experiment, spec: experiment_lib.StepSpec, teacher_vars, mesh) -> dict[str, Any]:
  """Runs the method's `prepare` hook over one epoch of the step's training data."""
  forward = ts.make_teacher_forward(spec.teacher_model)
  epoch = exp.batches_per_epoch(spec.index)
  ctx = methods.PrepareContext(
      teacher_forward=lambda images: forward(teacher_vars, sharding.put_batch({"image": images}, mesh)["image"]),
      batches=lambda: exp.train_batches(spec, 0, epoch), task=spec.info, options=exp.config.loss_options.to_dict())
  return dict(exp.method.prepare(ctx))


def _train_loop(exp: experiment_lib.Experiment, spec: experiment_lib.StepSpec, state, teacher_vars, extras, ckpt,
                start: int, writer, global_offset: int, step_fn, base_key, mesh, hooks: hooks_lib.Hooks,
                began: float):
  """Train steps [start, num_steps) with logging, periodic checkpoints and the non-finite guard.

  Prints once how long after `began` (`time.perf_counter()` when the task
  step began) its first train step finished: variables, the step's compile
  (or its read from the persistent cache), the first batch and the step.
  """
  cfg = exp.config
  k, num_steps = spec.index, spec.num_train_steps
  batches = exp.train_batches(spec, start, num_steps)
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (imports TensorFlow: see _run)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_secs=cfg.progress_every_secs)
  guard = NonFiniteGuard(cfg.nonfinite, k, ckpt)
  t0, last = time.time(), start
  for step in range(start, num_steps):
    state, metrics = step_fn(state, teacher_vars, sharding.put_batch(next(batches), mesh), base_key, extras)
    done = step + 1
    if step == start:  # one wait, so the figure includes the first step's own run
      jax.block_until_ready(metrics["loss"])
      print(f"  task {k}: first train step done {time.perf_counter() - began:.1f} s after the task step began "
            "(variables, compile or compilation cache, first batch)", flush=True)
    guard.push(done, metrics)
    hooks.after_train_step(k, done)
    report(done)
    if done % cfg.log_every == 0 or done == num_steps:
      guard.flush()
      metrics = jax.device_get(metrics)
      writer.write_scalars(global_offset + done, {f"train/{n}": v for n, v in metrics.items() if n != "finite"})
      rate = (done - last) / max(time.time() - t0, 1e-9)
      t0, last = time.time(), done
      eta = (num_steps - done) / max(rate, 1e-9)
      skipped = f"  skipped {int(metrics['skipped_batches'])}" if metrics["skipped_batches"] else ""
      print(f"  task {k} step {done}/{num_steps}  loss {float(metrics['loss']):.4f}  "
            f"lr {float(metrics['lr']):.2e}  {rate:.1f} steps/s  ETA {eta:.0f}s{skipped}", flush=True)
    if done % cfg.checkpoint_every == 0 and done < num_steps:
      guard.flush()
      ckpt.save(done, state)
  guard.flush()
  return state


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
      raise FloatingPointError(nonfinite_message(jax.device_get(metrics), self.task_index, done, self.ckpt))


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
