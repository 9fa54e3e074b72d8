"""SSUL (Cha et al., NeurIPS 2021; public code clovaai/SSUL): the `ssul` preset; SSUL-M is `ssul` + memory.

As the code's `run.sh` runs it (`--loss_type bce_loss --pseudo --pseudo_thresh
0.7 --freeze --bn_freeze --unknown --w_transfer`):
  * the model has SSUL's sigmoid heads (`model.head = "ssul"`: 3x3 conv +
    BatchNorm + ReLU + 1x1 per head, separate unknown and background heads)
    and predicts with its rule, argmax of [sigma(bg) + sigma(unknown),
    sigma(classes)] (`models.classifier.ssul_scores`);
  * one loss, `ssul_bce` (`incseg_jax/losses/ssul.py`): the unknown class
    carved out of the background with saliency maps (`dataset.saliency_dir`;
    built for `shapes`), old classes pseudo-labelled by the previous model at
    sigmoid >= 0.7, sigmoid BCE over every channel;
  * step 0 trains everything, the backbone at 0.1 x the learning rate (the
    code: 0.001 for the backbone, 0.01 for the rest);
  * after step 0 only three heads train: the new one, the unknown head, and
    the background head at 1e-4 x the learning rate. Everything else is
    frozen, every BatchNorm included (running statistics, no update of scale
    and offset), and every step starts at `schedule.base_lr` (the code's
    one `--lr` for all steps);
  * the new head starts as a copy of the previous model's unknown head (conv,
    BatchNorm, and its 1x1 weights in every new channel; `--w_transfer`);
  * labels: void stays ignored in training; classes not learned yet are
    ignored in evaluation (the code's metrics count the seen classes only).

SSUL-M adds `--mem_size 100` on VOC: `--config.memory.size=100` here
(`incseg_jax/memory.py`, docs/methods.md).

Not reproduced: the code keeps, at steps > 0, the checkpoint with the best
new-class mIoU on its validation list during training (model selection on
evaluation data); here the step's last model is its result, as for every
method.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from incseg_jax.losses import ssul as _ssul_losses  # noqa: F401  (registers the term)
from incseg_jax.methods import Method, register

BACKBONE_LR_SCALE = 0.1  # step 0: backbone 0.001 against the classifier's 0.01
BACKGROUND_LR_SCALE = 1e-4  # steps > 0: `opts.lr * 1e-4` for the background head


def ssul_lr_scales(task_index: int) -> dict[str, float]:
  """The code's parameter groups as learning-rate factors for task step `task_index`."""
  if task_index == 0:
    return {"backbone": BACKBONE_LR_SCALE}
  return {"classifier/background": BACKGROUND_LR_SCALE}


def ssul_head_init(teacher_variables: Mapping[str, Any], student_variables: Mapping[str, Any],
                   task_step: Any) -> dict[str, Any]:
  """SSUL's weight transfer: step k's head starts as the previous model's unknown head.

  The 3x3 conv, the BatchNorm (scale, offset, running statistics) are copied;
  every channel of the new 1x1 conv gets the unknown channel's weights and
  bias. At the start of the step each new class then scores what the old
  model's unknown did: the salient background the new classes are carved
  from.

  Args:
    teacher_variables: the previous model's variables ({"params", "batch_stats"}).
    student_variables: the grown model's variables (old heads copied, `head_k` fresh).
    task_step: the step (`.index` k >= 1, `.new_channels`).

  Returns:
    New variables: `head_k`'s parameters and statistics replaced, every other
    leaf the input's (nothing modified in place).

  Raises:
    ValueError: step 0, or a model without SSUL's heads.
  """
  k = task_step.index
  if k < 1:
    raise ValueError("ssul_head_init: step 0 has no previous model to initialise from")
  name = f"head_{k}"
  classifier = dict(student_variables["params"]["classifier"])
  if "unknown" not in teacher_variables["params"]["classifier"] or name not in classifier:
    raise ValueError(f"ssul_head_init: the models have no SSUL heads (unknown, {name}); set model.head='ssul'")
  unknown = teacher_variables["params"]["classifier"]["unknown"]
  n_new = np.asarray(classifier[name]["logits"]["kernel"]).shape[-1]
  if n_new != len(task_step.new_channels):
    raise ValueError(f"ssul_head_init: {name} has {n_new} channels, step {k} adds {len(task_step.new_channels)}")
  copy = lambda tree: jax.tree.map(lambda a: np.array(a, copy=True), dict(tree))
  head = copy({"conv": unknown["conv"], "bn": unknown["bn"]})
  head["logits"] = {"kernel": np.repeat(np.asarray(unknown["logits"]["kernel"]), n_new, axis=-1),
                    "bias": np.repeat(np.asarray(unknown["logits"]["bias"]), n_new, axis=-1)}
  classifier[name] = head
  out = dict(student_variables, params=dict(student_variables["params"], classifier=classifier))
  stats = dict(student_variables["batch_stats"]["classifier"])
  stats[name] = copy(teacher_variables["batch_stats"]["classifier"]["unknown"])
  out["batch_stats"] = dict(student_variables["batch_stats"], classifier=stats)
  return out


register(Method(
    name="ssul", losses={"ssul_bce": 1.0}, frozen=("backbone", "decoder"), freeze_old_heads=True,
    head_init=ssul_head_init, freeze_batchnorm=True, lr_scales=ssul_lr_scales, incremental_lr="base_lr",
    head="ssul", needs_saliency=True, void_as_background=False, unseen_eval="ignore",
    doc="SSUL: saliency-carved unknown class, sigmoid heads, pseudo-labels >= 0.7, only the new, unknown and "
        "background heads train after step 0; SSUL-M: + memory.size"))
