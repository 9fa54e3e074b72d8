"""Output distillation of the first paper (Michieli & Zanuttigh, Eqs. 3-5).

`kd_cls` (Eq. 3) is the cross-entropy between the previous model's softmax
and the current model's, over the already-seen classes S_{k-1};
`kd_cls_t` (Eqs. 4-5) computes both softmaxes at a temperature T.

How we read the equations, and the choices exposed as options:
  * The student's probabilities are its softmax over *all* its current
    channels, of which the first |S_{k-1}| (the old ones, background
    included) enter the sum (`student_softmax="all"`; the public ILT code
    does the same: softmax cross-entropy of the full output against the old
    softmax). `student_softmax="old"` renormalises over the old channels only
    (the MiB code's LwF/ILT variant).
  * Pixels: Eq. 3 sums over every pixel (`pixels="all"`, ignored/padded pixels
    excluded); the public code keeps pixels whose label is background or an
    old class (`pixels="bg_old"`, its `old_bgr`).
  * Reduction: `"mean"` over counted pixels (public code); `"sum"` over pixels
    divided by the batch size (the equation's per-image sum averaged over the
    images, 1/|D_k|).
  * No T^2 factor: the paper does not use one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from incseg_jax import losses


def _pixel_mask(inputs: losses.LossInputs, pixels: str, resolution: str, shape) -> jax.Array:
  if resolution == "os":
    if pixels != "all":
      raise ValueError(f"kd_cls: pixels={pixels!r} needs labels; use resolution='full'")
    return jnp.ones(shape, bool)
  labels = inputs.labels
  if pixels == "all":
    return labels != inputs.task.ignore_label
  if pixels == "bg_old":
    return labels < inputs.task.num_old_channels  # background (0) or an old channel
  raise ValueError(f"kd_cls: pixels={pixels!r}: expected 'all' or 'bg_old'")


def output_distillation(inputs: losses.LossInputs, temperature: float = 1.0, student_softmax: str = "all",
                        pixels: str = "all", reduction: str = "mean", resolution: str = "full") -> jax.Array:
  """Eq. 5 (Eq. 3 when temperature == 1); see the module docstring for options.

  Returns:
    A scalar: -sum_{c in S_{k-1}} p_old[c] log q[c], reduced over pixels.
  """
  key = {"full": "logits", "os": "logits_os"}.get(resolution)
  if key is None:
    raise ValueError(f"kd_cls: resolution={resolution!r}: expected 'full' or 'os'")
  n_old = inputs.task.num_old_channels
  teacher = inputs.teacher[key].astype(jnp.float32) / temperature
  student = inputs.student[key].astype(jnp.float32) / temperature
  target = jax.nn.softmax(teacher[..., :n_old], axis=-1)
  if student_softmax == "all":
    log_q = jax.nn.log_softmax(student, axis=-1)[..., :n_old]
  elif student_softmax == "old":
    log_q = jax.nn.log_softmax(student[..., :n_old], axis=-1)
  else:
    raise ValueError(f"kd_cls: student_softmax={student_softmax!r}: expected 'all' or 'old'")
  per_pixel = -(target * log_q).sum(-1)
  mask = _pixel_mask(inputs, pixels, resolution, per_pixel.shape)
  total = jnp.where(mask, per_pixel, 0.0).sum()
  if reduction == "mean":
    return total / jnp.maximum(mask.sum(), 1)
  if reduction == "sum":
    return total / per_pixel.shape[0]
  raise ValueError(f"kd_cls: reduction={reduction!r}: expected 'mean' or 'sum'")


@losses.register("kd_cls", needs_teacher=True)
def kd_cls(inputs: losses.LossInputs, student_softmax: str = "all", pixels: str = "all", reduction: str = "mean",
           resolution: str = "full") -> jax.Array:
  """Eq. 3: output distillation over the old classes (temperature 1)."""
  return output_distillation(inputs, 1.0, student_softmax, pixels, reduction, resolution)


@losses.register("kd_cls_t", needs_teacher=True)
def kd_cls_t(inputs: losses.LossInputs, temperature: float = 10.0, student_softmax: str = "all", pixels: str = "all",
             reduction: str = "mean", resolution: str = "full") -> jax.Array:
  """Eqs. 4-5: output distillation with both softmaxes at temperature T.

  The default T = 10 is our choice; the paper uses 1 to 10^3 depending on the
  scenario without listing per-scenario values.
  """
  return output_distillation(inputs, temperature, student_softmax, pixels, reduction, resolution)
