"""State a loss term carries from one task step to the next (an importance matrix, a running estimate).

A loss term may be registered with a `StateRule` (`losses.register(...,
state=rule)`); every method with that term in `config.losses` (nonzero
weight) then carries the state, at every task step, step 0 included (a
penalty term is off at step 0, but its state already accumulates there). The
rule says how the state is
- initialised at the start of a task step (`init`, on the host, from the
  previous step's final state, the student's starting parameters and the
  teacher's),
- updated by every train step inside the one jitted step (`update`, from the
  gradients of the step's forward loss terms, the parameters they were taken
  at, and the batch's forward outputs and labels), and
- read by its loss term (`LossInputs.state`).

The trainer keeps the states in `TrainState.method_state` (term name ->
state), on the device and
replicated like the parameters it shadows; it is saved as the `method` item of
every checkpoint of the task step (periodic ones included), restored on resume,
and the final step's state is what the next task step's `init` receives (read
from the checkpoint when that step ran in another process). A batch skipped as
non-finite leaves it unchanged, like the parameters.

State trees hold float32 arrays keyed like the parameter tree (or a part of
it); `restrict` and `merge` align a student's tree (one more head) with the
teacher's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np



@dataclasses.dataclass(frozen=True)
class StateContext:
  """What `StateRule.init` gets at the start of a task step.

  Attributes:
    params: the student's parameters at the start of the step (host arrays):
      after `init_from` or pretrained loading at step 0, the teacher's plus the
      new head's fresh values later.
    teacher_params: the previous step's final parameters (the teacher's), or
      None at step 0.
    previous: the previous step's final state, or None at step 0.
    task: the step's `losses.TaskInfo`.
    options: the term's options (`config.loss_options.<term>`).
  """
  params: Any
  teacher_params: Any | None
  previous: Any | None
  task: Any
  options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class UpdateInputs:
  """What `StateRule.update` gets inside the jitted train step.

  Attributes:
    grads: gradients of the step's forward loss terms (every term but the
      parameter penalties), as the reference code's `p.grad` before the penalty
      is back-propagated.
    params: the parameters those gradients were taken at (before this step's update).
    step: the train step within the task step, 0-based (int32 array).
    options: as in `StateContext`.
    student: the student's forward dict on this batch (stop-gradient).
    teacher: the teacher's forward dict, or None at step 0.
    labels: the batch's training targets (B, H, W), as the losses see them.
    task: the step's `losses.TaskInfo`.
  """
  grads: Any
  params: Any
  step: jax.Array
  options: Mapping[str, Any]
  student: Any = None
  teacher: Any = None
  labels: Any = None
  task: Any = None


@dataclasses.dataclass(frozen=True)
class StateRule:
  """How a method's state starts, changes and is read (see the module docstring).

  Attributes:
    name: the rule's name (the term's, in identity files and messages).
    init: StateContext -> state (a dict of float32 arrays, host or device).
    update: (state, UpdateInputs) -> state; traced once inside the train step.
    memory: what the state costs, in copies of the trainable parameters (for the docs).
  """
  name: str
  init: Callable[[StateContext], Any]
  update: Callable[[Any, UpdateInputs], Any]
  memory: str = ""


# ---------------------------------------------------------------------------
# Tree helpers for states keyed like the parameter tree.


def restrict(tree: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
  """The part of the nested dict `tree` at the paths of `like` (e.g. a student's params at the teacher's paths).

  Raises:
    KeyError: `like` has a path `tree` lacks.
  """
  out = {}
  for key, sub in like.items():
    if key not in tree:
      raise KeyError(f"state: no entry {key!r} (have {sorted(tree)})")
    out[key] = restrict(tree[key], sub) if isinstance(sub, Mapping) else tree[key]
  return out


def minmax_normalize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """(x - min) / (max - min + eps) over one host tensor, in float32: the MiB code's `normalize_fn`, per parameter."""
  x = np.asarray(x, np.float32)
  return (x - x.min()) / (x.max() - x.min() + np.float32(eps))


def quadratic_penalty(weights: Any, params: Any, reference: Any) -> jax.Array:
  """sum over the paths of `weights` of sum(weights * (params - reference)^2) (params restricted to those paths)."""
  params = restrict(params, weights)
  reference = restrict(reference, weights)
  parts = jax.tree.map(lambda w, p, r: jnp.sum(w * jnp.square(p.astype(jnp.float32) - r.astype(jnp.float32))),
                       weights, params, reference)
  return sum(jax.tree.leaves(parts), jnp.float32(0.0))


def merge(base: Mapping[str, Any], fill: Mapping[str, Any]) -> dict[str, Any]:
  """`fill`'s structure with `base`'s values where `base` has the path (e.g. old Fisher + ones for a new head)."""
  out = {}
  for key, sub in fill.items():
    if isinstance(sub, Mapping):
      out[key] = merge(base.get(key, {}) if isinstance(base, Mapping) else {}, sub)
    else:
      out[key] = base[key] if isinstance(base, Mapping) and key in base else sub
  return out


def combine(old: Mapping[str, Any], new: Mapping[str, Any], fn: Callable[[Any, Any], Any]) -> dict[str, Any]:
  """`new`'s structure: fn(old leaf, new leaf) where `old` has the path, the new leaf elsewhere."""
  out = {}
  for key, sub in new.items():
    if isinstance(sub, Mapping):
      out[key] = combine(old.get(key, {}) if isinstance(old, Mapping) else {}, sub, fn)
    else:
      out[key] = fn(old[key], sub) if isinstance(old, Mapping) and key in old else sub
  return out


def float32_like(tree: Any, value: float) -> Any:
  """A tree of float32 arrays shaped like `tree`, filled with `value` (host arrays)."""
  return jax.tree.map(lambda x: np.full(np.shape(x), value, np.float32), tree)


def copy_tree(tree: Any) -> Any:
  """Host float32 copies (the state must not share buffers with the donated train state)."""
  return jax.tree.map(lambda x: np.array(jax.device_get(x), dtype=np.float32), tree)
