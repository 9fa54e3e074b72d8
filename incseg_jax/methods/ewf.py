"""EWF, Endpoints Weight Fusion (Xiao et al., CVPR 2023; public code schuy1er/EWF_official).

An add-on to any method (`mib+ewf`, `plop+ewf`, or `ewf` alone on top of
fine-tuning): during an incremental step the heads of the previous steps are
frozen (the code's `--fix_pre_cls`), and when the step's training ends every
weight the previous model has is fused with the trained one,

    theta = (1 - w) theta_old + w theta_new,   w = sqrt(n_new / (n_new + n_old)),

with n_new the classes the step adds and n_old the classes before it
(background included), as the code's `run.py` computes `merge_weight`. The
fusion covers the code's whole `model_state`: parameters and BatchNorm
statistics. The new step's heads have no old counterpart and are kept as
trained. The fused model is the step's final checkpoint: it is the one
evaluated and the next step's teacher.

`config.ewf.top_fraction` (0 = off, the paper): the code's `threshold_choice`
(0.45 there, "not mentioned in the paper") fuses only the weights whose change
in the step is among the largest `top_fraction` of all, keeping the others as
trained. `config.ewf.weight` (0 = the rule above) fixes w instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from incseg_jax.methods import Method, register


def fusion_weight(num_new: int, num_old: int) -> float:
  """The code's `merge_weight`: sqrt(n_new / (n_new + n_old)), the share of the newly trained weights."""
  if num_new < 1 or num_old < 1:
    raise ValueError(f"EWF fusion weight: expected new and old class counts >= 1, got {num_new} and {num_old}")
  return math.sqrt(num_new / (num_new + num_old))


def fuse(old: Mapping[str, Any], new: Mapping[str, Any], weight: float, top_fraction: float = 0.0) -> dict[str, Any]:
  """Fuses every leaf of `old` with the same leaf of `new`; leaves only `new` has are kept.

  Args:
    old: the previous model's variables ({"params": ..., "batch_stats": ...}).
    new: the trained model's variables (a superset of `old`'s leaves).
    weight: w, the share of the new weights.
    top_fraction: 0 fuses every shared leaf entirely; in (0, 1] fuses only the
      entries whose |new - old| is among the largest `top_fraction` of all
      shared entries (ties at the threshold fused), keeping the others as
      trained.

  Returns:
    The fused variables, structured as `new`.

  Raises:
    ValueError: a leaf of `old` missing from `new` or of another shape.
  """
  flat_old = traverse_util.flatten_dict(dict(old), sep="/")
  flat_new = traverse_util.flatten_dict(dict(new), sep="/")
  for path, value in flat_old.items():
    if path not in flat_new or np.shape(flat_new[path]) != np.shape(value):
      raise ValueError(f"EWF: the previous model's {path} {np.shape(value)} has no counterpart of that shape in "
                       f"the trained model ({np.shape(flat_new[path]) if path in flat_new else 'missing'})")
  threshold = None
  if top_fraction:
    deltas = jnp.concatenate([jnp.abs(flat_new[p] - v).ravel() for p, v in flat_old.items()])
    k = max(int(deltas.size * top_fraction), 1)
    threshold = jax.lax.top_k(deltas, k)[0][-1]  # the code: topk(|delta|, 45%)[-1]
  out = dict(flat_new)
  for path, value in flat_old.items():
    fused = (1.0 - weight) * value + weight * flat_new[path]
    if threshold is not None:
      fused = jnp.where(jnp.abs(value - flat_new[path]) < threshold, flat_new[path], fused)
    out[path] = fused.astype(flat_new[path].dtype)
  return traverse_util.unflatten_dict(out, sep="/")


def ewf_fuse(teacher_variables: Mapping[str, Any], student_variables: Mapping[str, Any], task_step, options) -> dict:
  """The step-end rule of `Method.fuse`: `fuse` with the code's weight for `task_step`."""
  weight = options.get("weight") or fusion_weight(len(task_step.new_channels), 1 + len(task_step.old_channels))
  return fuse(teacher_variables, student_variables, weight, options.get("top_fraction", 0.0))


register(Method(
    name="ewf",
    losses={"ce": 1.0},
    fuse=ewf_fuse,
    freeze_old_heads=True,
    doc="EWF: previous heads frozen, weights fused with the previous model's after each step "
        "(w = sqrt(new / (new + old))); add to a method as +ewf"))
