"""RCIL's pooled cube distillation (Zhang et al., CVPR 2022; public code zhangchbin/RCIL).

This module owns the two terms that distil the previous model's intermediate
maps after average pooling, one over space and one over channels:

  L_spatial = s / L  sum_l w_l (1/|K|) sum_{k in K} mean_b || P_k(A_l^2) - P_k(B_l^2) ||,
  L_channel = s / L' sum_l w_l mean_b || Q(A_l^2) - Q(B_l^2) ||,

with A_l / B_l the teacher's / student's map of layer l squared element-wise,
P_k a k x k average pool (stride 1, zero padding k // 2, always divided by
k^2: PyTorch's `avg_pool2d` with `count_include_pad`), Q a window of 3
neighbouring channels averaged the same way (padding 1, divided by 3), the
norm the L2 norm of the whole pooled map of one image, s = sqrt(n_seen / n_new)
(n_seen the channels after this step, background included, n_new this step's
classes) and L, L' the number of distilled maps.

As the public code computes them (`train.py`, `features_distillation_spatial`
and `features_distillation_channel`, with `argparser.py`'s `--method RCIL`,
which adds `pod_logits`), which we match:
  * Maps: the four ResNet stage outputs after their final activation (the
    code's blocks apply their leaky ReLU in place before returning the map;
    PLOP's `pod` reads them before it), the ASPP output (`pre_logits`) and the
    logits at the output stride, with the new model's extra channels folded
    into background by summing raw logits (`pod.fold_extra_logits`). The
    spatial term distils all six; the channel term drops the last map of the
    list (`[:-1]`), i.e. the logits.
  * Spatial kernels k = 4, 8, 12, 16, 20, 24, averaged over the six.
  * Weights: the code gives 0.01 to every map and 0.0005 to whichever map is
    last in its list (`i == len(list) - 1`) -- the logits in the spatial term,
    the ASPP output in the channel term -- each times s, sums, divides by the
    number of maps; no further factor. Here 0.01 is the term's config weight
    and `last_weight` = 0.05 the last map's weight relative to it
    (0.01 x 0.05 = 0.0005). The code's ADE20K factors are 5e-6 and 5e-7
    (`last_weight` 0.1); its Cityscapes-domain ones 5e-4 and 1e-4 (spatial;
    channel 1e-4 and 0).
  * The norm is the plain (not squared) L2 norm per image, averaged over the
    batch; no normalisation of the maps.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from incseg_jax import losses
from incseg_jax.losses import pod

LAYERS = ("stage1", "stage2", "stage3", "stage4", "aspp", "logits")
CHANNEL_LAYERS = LAYERS[:-1]  # the code's `list_attentions[:-1]`
KERNELS = (4, 8, 12, 16, 20, 24)


def layer_maps(inputs: losses.LossInputs, layer: str, term: str) -> tuple[jax.Array, jax.Array]:
  """(student, teacher) maps of a named layer: POD's, with the stage outputs after their activation."""
  return pod.layer_maps(inputs, layer, term, stages="stages")


def box_mean(x: jax.Array, size: int, axes: Sequence[int]) -> jax.Array:
  """Sum over a `size`-wide window along each of `axes` (stride 1, zero padding size // 2), / size^len(axes).

  PyTorch's `avg_pool2d(x, size, stride=1, padding=size // 2)` with
  `count_include_pad=True` along those axes: every output is divided by the
  full window, padding included. Each axis grows by 2 (size // 2) - size + 1
  (1 for even sizes). Separable: one windowed sum per axis.
  """
  for axis in axes:
    window = [1] * x.ndim
    window[axis] = size
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size // 2, size // 2)
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, tuple(window), (1,) * x.ndim, tuple(pad))
  return x / float(size)**len(axes)


def per_image_norm(d: jax.Array) -> jax.Array:
  """L2 norm of each image's (B, ...) difference, with a zero gradient at d == 0.

  The plain sqrt's derivative is infinite at 0, which the first train step
  of a step would hit (the student starts equal to the teacher).
  """
  sq = jnp.square(d).reshape(d.shape[0], -1).sum(axis=1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _weighted_layers(inputs: losses.LossInputs, layers: Sequence[str], last_weight: float, class_schedule: bool,
                     term: str, layer_loss) -> jax.Array:
  """s / L sum_l w_l layer_loss(student_l^2, teacher_l^2), w = `last_weight` for the last of `layers`, else 1."""
  layers = tuple(layers)
  if not layers:
    raise ValueError(f"{term}: `layers` is empty")
  total = 0.0
  for i, layer in enumerate(layers):
    student, teacher = layer_maps(inputs, layer, term)
    value = layer_loss(jnp.square(student.astype(jnp.float32)), jnp.square(teacher.astype(jnp.float32)))
    total = total + (last_weight if i == len(layers) - 1 else 1.0) * value
  task = inputs.task
  schedule = (task.num_channels / len(task.new_channels))**0.5 if class_schedule else 1.0
  return schedule * total / len(layers)


@losses.register("pcd_spatial", needs_teacher=True)
def spatial_distillation(inputs: losses.LossInputs, layers: Sequence[str] = LAYERS, kernels: Sequence[int] = KERNELS,
                         last_weight: float = 0.05, class_schedule: bool = True) -> jax.Array:
  """Spatial pooled cube distillation (module doc).

  Args:
    inputs: the step's LossInputs (teacher required).
    layers: the distilled maps, in order (LAYERS); the sum is divided by
      their number.
    kernels: the square average-pooling sizes, averaged per map.
    last_weight: weight of the last of `layers` (the code's 0.0005 / 0.01),
      the others 1.
    class_schedule: multiply by sqrt(n_seen / n_new), as the code.

  Returns:
    A scalar, to be multiplied by the term's weight (0.01 in `rcil`).
  """
  kernels = tuple(int(k) for k in kernels)
  if not kernels or min(kernels) < 1:
    raise ValueError(f"pcd_spatial: kernels={kernels}: expected positive pooling sizes")

  def layer_loss(student, teacher):
    return sum(per_image_norm(box_mean(student, k, (1, 2)) - box_mean(teacher, k, (1, 2))).mean()
               for k in kernels) / len(kernels)

  return _weighted_layers(inputs, layers, last_weight, class_schedule, "pcd_spatial", layer_loss)


@losses.register("pcd_channel", needs_teacher=True)
def channel_distillation(inputs: losses.LossInputs, layers: Sequence[str] = CHANNEL_LAYERS, window: int = 3,
                         last_weight: float = 0.05, class_schedule: bool = True) -> jax.Array:
  """Channel pooled cube distillation (module doc).

  Args:
    inputs: the step's LossInputs (teacher required).
    layers: the distilled maps, in order (by default LAYERS without the
      logits, as the code); the sum is divided by their number.
    window: the number of neighbouring channels averaged (zero padding
      window // 2, divided by `window`).
    last_weight: weight of the last of `layers` (the code's 0.0005 / 0.01:
      the ASPP output by default), the others 1.
    class_schedule: multiply by sqrt(n_seen / n_new), as the code.

  Returns:
    A scalar, to be multiplied by the term's weight (0.01 in `rcil`).
  """
  if int(window) < 1:
    raise ValueError(f"pcd_channel: window={window}: expected a positive channel count")

  def layer_loss(student, teacher):
    return per_image_norm(box_mean(student, int(window), (3,)) - box_mean(teacher, int(window), (3,))).mean()

  return _weighted_layers(inputs, layers, last_weight, class_schedule, "pcd_channel", layer_loss)
