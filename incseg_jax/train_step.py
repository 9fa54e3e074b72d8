"""The jitted train step: student + frozen teacher + every loss term, one update.

One `jax.jit` computes the teacher forward (previous step's variables, under
`stop_gradient`, never differentiated nor donated), the student forward, the
weighted sum of the configured loss terms, the student's gradients and the
optimizer update. Parameters and BatchNorm statistics under a frozen prefix
are not updated at all (no gradient step, no weight decay, statistics kept).

The step also guards itself: when any loss term, the total or the gradient
norm is not finite, it keeps params, optimizer state and BatchNorm statistics
as they were, counts the batch in `state.skipped` and reports `finite=False`
in its metrics; the host decides whether to stop or go on (`config.nonfinite`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
from flax import struct

from incseg_jax import losses as losses_lib
from incseg_jax import models
from incseg_jax import replay as replay_lib
from incseg_jax.losses import state as state_lib


class TrainState(struct.PyTreeNode):
  """Everything that changes during training of one task step.

  Attributes:
    step: train steps taken (skipped batches included).
    params: the student's parameters.
    batch_stats: its BatchNorm statistics.
    opt_state: the optimizer's state.
    skipped: batches left out because a loss or the gradient was not finite.
    method_state: term name -> the state that term carries across task steps
      (`losses.state`), or None when no term has state.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # A strong int32 like the step's output: a weak-typed 0 would make the
  # second call of the jitted step trace and compile it again.
  skipped: jax.Array = np.int32(0)
  method_state: Any = None


def lr_schedule(start: float, end: float, power: float, num_steps: int) -> optax.Schedule:
  """Polynomial decay from `start` to `end` over `num_steps` (both papers' 'poly')."""
  return optax.polynomial_schedule(init_value=start, end_value=end, power=power, transition_steps=max(num_steps, 1))


def make_optimizer(optim_cfg, schedule: optax.Schedule, params: Any, frozen: Sequence[str],
                   lr_scales: Sequence[tuple[str, float]] = ()) -> optax.GradientTransformation:
  """SGD (+ momentum, optionally Nesterov) with L2 weight decay on trainable params.

  Weight decay is added to the gradient before momentum, as PyTorch's SGD does
  (the reference code's optimizer), on every trainable parameter; frozen
  parameters get a zero update. Parameters under a prefix of `lr_scales`
  train at its factor x `schedule` (a PyTorch parameter group with its own
  lr: the decay is scaled with it); the longest matching prefix wins, and
  frozen wins over any scale.
  """
  def sgd(scale: float) -> optax.GradientTransformation:
    rate = schedule if scale == 1.0 else (lambda count: scale * schedule(count))
    return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                       optax.sgd(rate, momentum=optim_cfg.momentum or None, nesterov=optim_cfg.nesterov))

  if not frozen and not lr_scales:
    return sgd(1.0)
  by_length = sorted(lr_scales, key=lambda pf: -len(pf[0].rstrip("/")))

  def label(path, _):
    name = models.path_str(path)
    if models.is_frozen(name, frozen):
      return "frozen"
    for i, (prefix, _) in enumerate(by_length):
      if models.is_frozen(name, (prefix,)):
        return f"scale_{i}"
    return "train"

  labels = jax.tree_util.tree_map_with_path(label, params)
  transforms = {"train": sgd(1.0), "frozen": optax.set_to_zero()}
  transforms.update({f"scale_{i}": sgd(float(f)) for i, (_, f) in enumerate(by_length)})
  return optax.multi_transform(transforms, labels)


def global_norm(tree) -> jax.Array:
  """`optax.tree.norm(tree)` of a float pytree, bit for bit, in lax.

  optax's goes through three `jnp` functions per leaf, each a nested jit to
  trace: 9% of a ResNet-101 step's trace under cProfile, for its 334
  gradients (docs/benchmarks.md, "Tracing"). The same sum of squares in the
  same leaf order.
  """
  total = np.float32(0)
  for leaf in jax.tree.leaves(tree):
    total = lax.add(total, lax.reduce_sum(lax.square(leaf), tuple(range(leaf.ndim))))
  return lax.sqrt(total)


def make_train_step(student: nn.Module, teacher: nn.Module | None, terms: Sequence[tuple[str, float, dict]],
                    task: losses_lib.TaskInfo, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    frozen: Sequence[str] = (), states: Sequence[tuple[str, Any, dict]] = (),
                    replay: Mapping[str, Any] | None = None) -> Callable:
  """Builds the jitted update for one task step.

  Args:
    student: the current model definition.
    teacher: the previous step's model definition (None at step 0).
    terms: (loss name, weight, options) of the active terms.
    task: static facts of the task step, passed to the losses.
    tx: the optimizer.
    schedule: the learning-rate schedule (for logging only).
    frozen: parameter-path prefixes whose params and batch_stats must not change.
    states: (term name, `losses.state.StateRule`, options) of the terms that
      carry state: `state.method_state[name]` is updated by every applied
      train step from the forward terms' gradients and the parameters they
      were taken at, and is the term's `inputs.state`.
    replay: `{"label": mode, "mix_labels": bool, "prelabelled": bool}` when
      the batches carry replay images (`batch["replay_class"]`): their labels
      (unless `prelabelled`: they came with the batch), and with `mix_labels`
      the background of the step's own images, come from the teacher's
      logits before any loss term sees them (`incseg_jax.replay`).

  Returns:
    `step(state, teacher_variables, batch, key, extras=None) -> (state, metrics)`, jitted,
    donating `state` (so the state must not share buffers with
    `teacher_variables`: build it from host copies, as `train` does). `key` is the task step's base key; the step folds in
    its own counter, so randomness depends on (seed, task step, train step) only.
    `metrics` holds `loss`, `loss_<term>`, `grad_norm`, `lr`, `skipped_batches`
    and `finite` (False: the update was not applied, see the module doc).
  """
  fns = [(name, weight, losses_lib.get(name), dict(opts)) for name, weight, opts in terms
         if not losses_lib.reads_params(name)]
  param_fns = [(name, weight, losses_lib.get(name), dict(opts)) for name, weight, opts in terms
               if losses_lib.reads_params(name)]
  states = tuple(states)

  def step(state: TrainState, teacher_variables: Any, batch: dict, key: jax.Array, extras: dict | None = None):
    images, labels = batch["image"], batch["label"]
    rng = jax.random.fold_in(key, state.step)
    teacher_out = None
    if teacher is not None:
      teacher_out = jax.lax.stop_gradient(teacher.apply(teacher_variables, images, train=False))
      if replay is not None and "replay_class" in batch:
        if not replay.get("prelabelled"):  # labelled now by the previous model
          labels = replay_lib.label_replay(models.prediction_scores(teacher_out), labels, batch["replay_class"],
                                           mode=replay["label"], ignore_label=task.ignore_label)
        if replay["mix_labels"]:
          labels = replay_lib.mix_background(models.prediction_scores(teacher_out), labels, batch["replay_class"])
    method_state = state.method_state or {}
    step_index = state.step

    def loss_fn(params):
      out, mutated = student.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": rng})
      inputs = losses_lib.LossInputs(student=out, teacher=teacher_out, labels=labels, images=images, task=task,
                                     extras=extras or {}, saliency=batch.get("saliency"))
      values = {name: fn(_with_state(inputs, method_state, name), **opts) for name, _, fn, opts in fns}
      total = sum(weight * values[name] for name, weight, _, _ in fns)
      # A state update may read the forward outputs (e.g. prototypes from the features).
      return total, (values, mutated["batch_stats"]) + ((out,) if states else ())

    (total, (values, new_stats, *student_out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    forward_grads = grads
    if param_fns:
      # Parameter penalties are differentiated apart, so a state update sees the
      # forward terms' gradients only (the reference code updates its
      # importance before back-propagating the penalty).
      teacher_params = jax.lax.stop_gradient(teacher_variables["params"])

      def penalty_fn(params):
        inputs = losses_lib.LossInputs(student=None, teacher=None, labels=labels, images=images, task=task,
                                       extras=extras or {}, params=params, teacher_params=teacher_params)
        pen = {name: fn(_with_state(inputs, method_state, name), **opts) for name, _, fn, opts in param_fns}
        return sum(weight * pen[name] for name, weight, _, _ in param_fns), pen

      (pen_total, pen_values), pen_grads = jax.value_and_grad(penalty_fn, has_aux=True)(state.params)
      total = total + pen_total
      values = dict(values, **pen_values)
      grads = jax.tree.map(jnp.add, grads, pen_grads)
    grad_norm = global_norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    for v in values.values():
      finite &= jnp.all(jnp.isfinite(v))

    # The update sits inside the cond's branch, so XLA fuses it as it did
    # before the guard existed (a select after it changed the fusion and with
    # it the low bits of every result); a skipped batch costs no update.
    def update(operands):
      grads, new_stats, params, opt_state, stats = operands[:5]
      updates, opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      if frozen:
        # BatchNorm statistics are not parameters: keep the frozen ones explicitly.
        mask = models.frozen_mask(new_stats, frozen)
        new_stats = jax.tree.map(lambda m, old, new: old if m else new, mask, stats, new_stats)
      if not states:
        return new_params, opt_state, new_stats
      forward_grads, ms = operands[5:]
      seen = state_lib.UpdateInputs(grads=forward_grads, params=params, step=step_index, options={},
                                    student=jax.lax.stop_gradient(student_out[0]), teacher=teacher_out,
                                    labels=labels, task=task)
      ms = {name: rule.update(ms[name], dataclasses.replace(seen, options=opts)) for name, rule, opts in states}
      return new_params, opt_state, new_stats, ms

    def keep(operands):
      _, _, params, opt_state, stats = operands[:5]
      # The batch still uses up its learning-rate step (as a per-iteration
      # scheduler would), so the applied lr stays the logged schedule(step);
      # momentum, weights, BatchNorm statistics and method states are untouched.
      return (params, _advance_schedules(opt_state), stats) + tuple(operands[6:])

    operands = (grads, new_stats, state.params, state.opt_state, state.batch_stats)
    if states:
      operands += (forward_grads, method_state)
    params, opt_state, new_stats, *new_ms = jax.lax.cond(finite, update, keep, operands)
    if states:
      state = state.replace(method_state=new_ms[0])
    skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
    metrics = {"loss": total, "grad_norm": grad_norm, "lr": schedule(state.step), "skipped_batches": skipped,
               "finite": finite}
    metrics.update({f"loss_{k}": v for k, v in values.items()})
    return state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state,
                         skipped=skipped), metrics

  return jax.jit(step, donate_argnames=("state",))


def _with_state(inputs: losses_lib.LossInputs, method_state: dict, name: str) -> losses_lib.LossInputs:
  """`inputs` with the term's own state (unchanged for a stateless term)."""
  if name not in method_state:
    return inputs
  return dataclasses.replace(inputs, state=method_state[name])


def _advance_schedules(opt_state: Any) -> Any:
  """`opt_state` with every learning-rate schedule counter advanced by one."""
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  return jax.tree.map(lambda s: s._replace(count=optax.safe_int32_increment(s.count)) if is_sched(s) else s,
                      opt_state, is_leaf=is_sched)


@functools.lru_cache(maxsize=16)
def make_teacher_forward(model: nn.Module) -> Callable:
  """Jitted eval-mode forward `(variables, images) -> outputs dict` (for `prepare` hooks; memoised by value, as
  `evaluation.make_eval_step`)."""
  return jax.jit(lambda variables, images: model.apply(variables, images, train=False))
