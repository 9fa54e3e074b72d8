"""MiB (Cermelli et al., CVPR 2020) and the MiB code's LwF / LwF-MC baselines.

This module owns the three presets and MiB's classifier initialisation; the
loss terms are in `incseg_jax/losses/mib.py`. Weights are the MiB code's,
the same for every scenario (docs/reference_code.md §7):
  * lwf: ce + 100 * lwf.
  * lwf_mc: bce (in place of ce, from step 0 on) + 10 * lwf_mc_kd; the 10 is
    the code's `icarl_importance` (its extra factor n_old is inside the term,
    see `lwf_mc_kd`).
  * mib: unbiased_ce (in place of ce; plain CE at step 0) + 10 * unbiased_kd,
    new heads initialised by `mib_head_init`.
  * icarl: the `icarl` term alone (weight 1): `bce` at step 0, then BCE
    against the old model's sigmoid on the old channels (the code's
    `--icarl --icarl_disjoint`; not one of its `--method` presets, nor a row
    of the papers' tables).
All four run in MiB's code, so they share its label conventions
(docs/reference_code.md §10): void is trained as background, and classes not
yet learned are ignored in evaluation.

`conventions=paper` switches `unbiased_kd` to Eq. 15 as written (sum over the
old classes instead of the code's mean).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from incseg_jax.losses import mib as _mib_losses  # noqa: F401  (registers the terms)
from incseg_jax.methods import Method, register


def mib_head_init(teacher_variables: Mapping[str, Any], student_variables: Mapping[str, Any],
                  task_step: Any) -> dict[str, Any]:
  """MiB's initialisation of step k's head (docs/reference_code.md §6).

  Every new channel gets the old background's weights, and the new channels
  and the background all get the bias b_0 - log(N_new + 1). The student's
  logits are then z_0 - log(N_new + 1) on background and every new channel,
  so p(background) + sum_new p(new) of the student equals the old model's
  p(background) on any input: at the start of the step the new classes split
  the old background's probability evenly with background, and the old
  classes' probabilities are unchanged.

  Args:
    teacher_variables: the previous model's variables; the background's
      weights and bias are read from its `classifier/head_0`.
    student_variables: the grown model's variables (old heads copied from the
      teacher, `classifier/head_{k}` freshly initialised).
    task_step: the step (`.index` k >= 1, `.new_channels`).

  Returns:
    A new variables dict: `head_{k}` replaced, head_0's bias with its
    background entry lowered, every other leaf the input's (same objects;
    nothing is modified in place).

  Raises:
    ValueError: step 0, or a new head whose width is not len(new_channels).
  """
  k = task_step.index
  if k < 1:
    raise ValueError("mib_head_init: step 0 has no previous model to initialise from")
  old_head = teacher_variables["params"]["classifier"]["head_0"]
  bg_weight = np.asarray(old_head["kernel"])[..., 0]  # (1, 1, D)
  bg_bias = np.asarray(old_head["bias"])[0]
  classifier = dict(student_variables["params"]["classifier"])
  name = f"head_{k}"
  kernel = np.asarray(classifier[name]["kernel"])
  n_new = kernel.shape[-1]
  if n_new != len(task_step.new_channels):
    raise ValueError(f"mib_head_init: {name} has {n_new} channels, step {k} adds {len(task_step.new_channels)}")
  # The shift makes the N_new + 1 equal logits sum (in probability) to the old background's.
  new_bias = bg_bias - np.log(n_new + 1.0)
  classifier[name] = dict(classifier[name],
                          kernel=np.broadcast_to(bg_weight[..., None], kernel.shape).astype(kernel.dtype),
                          bias=np.full((n_new,), new_bias, np.asarray(classifier[name]["bias"]).dtype))
  head_0 = dict(classifier["head_0"])
  bias_0 = np.array(head_0["bias"], copy=True)
  bias_0[0] = new_bias
  head_0["bias"] = bias_0
  classifier["head_0"] = head_0
  params = dict(student_variables["params"], classifier=classifier)
  return dict(student_variables, params=params)


_MIB_LABELS = {"void_as_background": True, "unseen_eval": "ignore"}
# `conventions=paper`: Eq. 15 sums over the old classes (the code averages).
MIB_PAPER_OPTIONS = {"unbiased_kd": {"class_reduction": "sum"}}

register(Method(name="lwf", losses={"ce": 1.0, "lwf": 100.0}, **_MIB_LABELS,
                doc="LwF as in the MiB code: KD on the old channels' softmax"))
register(Method(name="lwf_mc", losses={"bce": 1.0, "lwf_mc_kd": 10.0}, **_MIB_LABELS,
                doc="LwF-MC as in the MiB code: sigmoid BCE + BCE distillation"))
register(Method(name="mib", losses={"unbiased_ce": 1.0, "unbiased_kd": 10.0}, head_init=mib_head_init,
                paper_options=MIB_PAPER_OPTIONS, **_MIB_LABELS,
                doc="MiB: unbiased CE + unbiased KD + background-based head init"))
register(Method(name="icarl", losses={"icarl": 1.0}, options={"icarl": {"background_from_labels": False}},
                **_MIB_LABELS, doc="iCaRL as in the MiB code: BCE with the old model's sigmoid as old targets"))
