"""MiB's loss terms and the MiB code's LwF / LwF-MC baselines.

This module owns the terms of Cermelli et al.'s MiB as restated in the UCD
paper (sec. 3.6, Eqs. 12-17): `unbiased_ce` (Eqs. 13-14) and `unbiased_kd`
(Eqs. 15-16); and the two output-distillation baselines that MiB's public code
runs for its tables: `lwf` (LwF) and `bce` + `lwf_mc_kd` (LwF-MC). Their presets
and MiB's head initialisation live in `incseg_jax/methods/mib.py`.

Conventions shared by every term (docs/reference_code.md §1-5), chosen because
the published loss weights were tuned under them:
  * All terms read `logits`, the outputs upsampled to the input resolution,
    as the code does (it upsamples before every loss).
  * Per-pixel losses are averaged over all B*H*W pixels; ignored pixels count
    as 0 in the supervised terms, and the distillation terms mask nothing.
  * No temperature: the teacher's softmax/sigmoid is taken at T = 1.
Channel layout: 0 = background, [1, N_old) = old classes, [N_old, N) = the
classes of this step, N_old = `task.num_old_channels` (background included).

Options of the reference code that its published runs leave at their
defaults, so ours are off by default too (docs/reference_code.md §3-5):
  * `alpha` (`unbiased_kd`, `lwf`): the MiB code's `--alpha` multiplies the
    old model's logits before their softmax (a sharper target for alpha > 1),
    default 1.
  * `mask`, `mask_adaptive_factor` (`unbiased_kd`): the PLOP and UCD code's
    `--kd_mask` / `--kd_mask_adaptative_factor`, which keep the distillation
    only at some pixels (see `unbiased_distillation`).
  * The `icarl` term: the MiB code's iCaRL (`--icarl --icarl_disjoint`),
    whose classification loss takes the old model's sigmoid outputs as the
    targets of the old channels (LwF-MC's `lwf_mc_kd` is `--icarl` alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from incseg_jax import losses
from incseg_jax.losses import ce


def _class_reduce(per_pixel_sum: jax.Array, n_classes: int, class_reduction: str, term: str) -> jax.Array:
  """Divides a per-pixel sum over classes by their number ("mean") or not ("sum")."""
  if class_reduction == "mean":
    return per_pixel_sum / n_classes
  if class_reduction == "sum":
    return per_pixel_sum
  raise ValueError(f"{term}: class_reduction={class_reduction!r}: expected 'mean' or 'sum'")


def _binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise BCE of sigmoid(logits) against soft targets in [0, 1]."""
  # softplus(x) - x*y is -[y log s(x) + (1-y) log(1-s(x))], without overflow.
  return jax.nn.softplus(logits) - logits * targets


@losses.register("unbiased_ce")
def unbiased_cross_entropy(inputs: losses.LossInputs, reduction: str = "all_pixels") -> jax.Array:
  """Eqs. 13-14: cross-entropy where background absorbs the old classes.

  The background's probability is p_0 + sum_{c old} p_c, i.e. its
  log-probability is logsumexp(z_0, z_old) - logsumexp(z_all); the other
  channels keep their usual log-softmax. Labels of old classes are mapped to
  background first (the reference code does so "to be sure"; in the
  overlapped/disjoint settings the data pipeline already has). At step 0
  (no old classes) this is plain cross-entropy.

  Reference code: per-pixel NLL with ignored pixels 0, averaged over all
  B*H*W pixels (`reduction="all_pixels"`), which is Eq. 13's 1/N with N the
  number of pixels. Void becomes background upstream in MiB's convention
  (`Method.void_as_background`), so in its presets no pixel is ignored.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]` and `labels`.
    reduction: see `ce.masked_mean` ("all_pixels", "valid" or "sum").

  Returns:
    A scalar loss.
  """
  logits = inputs.student["logits"].astype(jnp.float32)
  n_old = inputs.task.num_old_channels
  den = jax.nn.logsumexp(logits, axis=-1)
  log_bg = jax.nn.logsumexp(logits[..., :n_old], axis=-1) - den
  log_p = (logits - den[..., None]).at[..., 0].set(log_bg)
  labels = inputs.labels
  valid = labels != inputs.task.ignore_label
  # Old classes (and background) -> 0; ignored pixels read channel 0 and are zeroed below.
  target = jnp.where(valid & (labels >= n_old), labels, 0)
  nll = -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
  return ce.masked_mean(jnp.where(valid, nll, 0.0), valid, reduction)


_KD_MASKS = ("none", "oldbackground", "new")


def _kd_mask(labels: jax.Array, n_old: int, mask: str, term: str) -> jax.Array | None:
  """The PLOP/UCD code's `--kd_mask` pixels, (B, H, W) float, or None for "none".

  Comparisons on the raw label values, as the code: "oldbackground" is
  label < N_old (the ignore label is not), "new" is label >= N_old (the
  ignore label is).
  """
  if mask == "none":
    return None
  if mask == "oldbackground":
    return (labels < n_old).astype(jnp.float32)
  if mask == "new":
    return (labels >= n_old).astype(jnp.float32)
  raise ValueError(f"{term}: mask={mask!r}: expected one of {_KD_MASKS}")


@losses.register("unbiased_kd", needs_teacher=True)
def unbiased_distillation(inputs: losses.LossInputs, class_reduction: str = "mean", alpha: float = 1.0,
                          mask: str = "none", mask_adaptive_factor: bool = False) -> jax.Array:
  """Eqs. 15-16: distillation where the student's background absorbs the new classes.

  Teacher p = softmax of the old model's logits (alpha = 1, no temperature).
  Student: log q_0 = logsumexp(z_0, z_new) - logsumexp(z_all), log q_c =
  log_softmax(z)_c for the old classes c. Per pixel, -sum_{c < N_old} p_c
  log q_c; then the mean over every pixel (no ignore mask, as the code).

  Reference code vs Eq. 15: the code divides the class sum by N_old (old
  classes plus background; `class_reduction="mean"`, the default), so the
  preset's lambda_kd = 10 is effectively 10 / N_old on Eq. 15's sum.
  `class_reduction="sum"` is Eq. 15 as written (`conventions=paper`).

  Reference-code options, off by default (module doc): `alpha` scales the
  teacher's logits before the softmax (MiB's `--alpha`). `mask` keeps the
  per-pixel loss only at some pixels of the training labels (PLOP/UCD's
  `--kd_mask`): "oldbackground" = label < N_old, "new" = label >= N_old
  (void included, as the code compares raw values); the masked map is still
  averaged over every pixel. `mask_adaptive_factor` (the code's
  `--kd_mask_adaptative_factor`, with a mask only) then multiplies each
  image's mean by its fraction of masked-in pixels before the batch mean.
  The code's labels there are the ones its train step trains on (after
  PLOP's pseudo-labelling when that is on); ours are `inputs.labels`.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]`, `teacher["logits"]`
      (and `labels` with a mask).
    class_reduction: "mean" (divide by N_old, code) or "sum" (Eq. 15).
    alpha: teacher-logit scale (1: none).
    mask: "none", "oldbackground" or "new".
    mask_adaptive_factor: scale each image by its masked-in fraction.

  Returns:
    A scalar loss.
  """
  n_old = inputs.task.num_old_channels
  student = inputs.student["logits"].astype(jnp.float32)
  target = jax.nn.softmax(inputs.teacher["logits"][..., :n_old].astype(jnp.float32) * alpha, axis=-1)
  den = jax.nn.logsumexp(student, axis=-1, keepdims=True)
  bg_and_new = jnp.concatenate([student[..., :1], student[..., n_old:]], axis=-1)
  log_bg = jax.nn.logsumexp(bg_and_new, axis=-1, keepdims=True) - den
  log_q = jnp.concatenate([log_bg, student[..., 1:n_old] - den], axis=-1)
  per_pixel = _class_reduce(-(target * log_q).sum(-1), n_old, class_reduction, "unbiased_kd")
  keep = _kd_mask(inputs.labels, n_old, mask, "unbiased_kd")
  if keep is None:
    return per_pixel.mean()
  per_pixel = per_pixel * keep
  if mask_adaptive_factor:
    return (per_pixel.mean(axis=(1, 2)) * keep.mean(axis=(1, 2))).mean()
  return per_pixel.mean()


@losses.register("lwf", needs_teacher=True)
def learning_without_forgetting(inputs: losses.LossInputs, class_reduction: str = "mean",
                                alpha: float = 1.0) -> jax.Array:
  """LwF as in the MiB code (reference_code.md §4): KD on the old channels only.

  q = log_softmax of the student's first N_old logits (the new channels play
  no part), p = softmax of the teacher's (no temperature, unlike LwF's
  original T = 2); per pixel -sum_c p_c log q_c divided by N_old
  (`class_reduction="mean"`, the code's mean over classes), then the mean
  over every pixel. The code's lambda is 100 (the `lwf` preset). `alpha`
  multiplies the teacher's logits before their softmax (the code's
  `--alpha`, 1 in its runs); the student's are not scaled.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]`, `teacher["logits"]`.
    class_reduction: "mean" (divide by N_old, code) or "sum".
    alpha: teacher-logit scale (1: none).

  Returns:
    A scalar loss.
  """
  n_old = inputs.task.num_old_channels
  log_q = jax.nn.log_softmax(inputs.student["logits"][..., :n_old].astype(jnp.float32), axis=-1)
  target = jax.nn.softmax(inputs.teacher["logits"][..., :n_old].astype(jnp.float32) * alpha, axis=-1)
  per_pixel = -(target * log_q).sum(-1)
  return _class_reduce(per_pixel, n_old, class_reduction, "lwf").mean()


@losses.register("bce")
def binary_cross_entropy(inputs: losses.LossInputs, reduction: str = "all_pixels") -> jax.Array:
  """LwF-MC's classification term (reference_code.md §5): per-channel sigmoid BCE.

  Targets are the one-hot labels over all N current channels; per pixel the
  BCE is summed over channels; ignored pixels contribute 0; the reference
  code then averages over all B*H*W pixels (`reduction="all_pixels"`). It is
  used from step 0 on, in place of the softmax cross-entropy.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]` and `labels`.
    reduction: see `ce.masked_mean` ("all_pixels", "valid" or "sum").

  Returns:
    A scalar loss.
  """
  logits = inputs.student["logits"].astype(jnp.float32)
  valid = inputs.labels != inputs.task.ignore_label
  onehot = jax.nn.one_hot(jnp.where(valid, inputs.labels, 0), logits.shape[-1], dtype=jnp.float32)
  per_pixel = _binary_cross_entropy(logits, onehot).sum(-1)
  return ce.masked_mean(jnp.where(valid, per_pixel, 0.0), valid, reduction)


@losses.register("lwf_mc_kd", needs_teacher=True)
def lwf_mc_distillation(inputs: losses.LossInputs) -> jax.Array:
  """LwF-MC's distillation term (reference_code.md §5): sigmoid BCE against the old model.

  Per pixel, sum over the old channels c < N_old (background included) of
  BCE(sigmoid(z_c), sigmoid(z_old_c)); then the mean over every pixel.

  Weight: the reference code computes 10 * n_old * BCE_mean, where BCE_mean
  averages over old channels *and* pixels; n_old * BCE_mean is exactly this
  term (sum over old channels, mean over pixels), so the config weight is the
  code's `icarl_importance`, 10 in the `lwf_mc` preset, and n_old is not part
  of the weight.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]`, `teacher["logits"]`.

  Returns:
    A scalar loss.
  """
  n_old = inputs.task.num_old_channels
  student = inputs.student["logits"][..., :n_old].astype(jnp.float32)
  target = jax.nn.sigmoid(inputs.teacher["logits"][..., :n_old].astype(jnp.float32))
  return _binary_cross_entropy(student, target).sum(-1).mean()


@losses.register("icarl")
def icarl(inputs: losses.LossInputs, background_from_labels: bool = False) -> jax.Array:
  """iCaRL as in the MiB code (`--icarl --icarl_disjoint`): BCE with the old model's outputs as targets.

  At step 0 (no teacher) the code trains the sigmoid BCE of `bce`
  (`reduction="all_pixels"`), so this term is registered with
  needs_teacher=False and is `bce` there. At steps > 0 it replaces the
  classification loss: per pixel and channel a sigmoid BCE whose targets are
  the one-hot label on the new channels and sigmoid(z_old) of the previous
  model on the old channels [0, N_old) (background included), summed over the
  channels and averaged over every pixel. With `background_from_labels` (the
  code's `--icarl_bkg`) the background keeps its one-hot target and only
  the old classes [1, N_old) take the old model's.

  As the code computes it, ignored pixels are not left out at steps > 0:
  their one-hot row is zero, so they still get the old model's targets on
  the old channels and 0 on the new ones. (Where void is trained as
  background, MiB's convention, no pixel is ignored.)

  Args:
    inputs: the step's LossInputs; uses `student["logits"]`, `labels` and
      `teacher["logits"]` at steps > 0.
    background_from_labels: the background's target from the labels, not
      from the old model.

  Returns:
    A scalar loss.
  """
  if inputs.teacher is None:
    return binary_cross_entropy(inputs, reduction="all_pixels")
  logits = inputs.student["logits"].astype(jnp.float32)
  n_old = inputs.task.num_old_channels
  valid = inputs.labels != inputs.task.ignore_label
  targets = jax.nn.one_hot(jnp.where(valid, inputs.labels, 0), logits.shape[-1], dtype=jnp.float32)
  targets = targets * valid[..., None]
  old = jax.nn.sigmoid(inputs.teacher["logits"][..., :n_old].astype(jnp.float32))
  first = 1 if background_from_labels else 0
  targets = targets.at[..., first:n_old].set(old[..., first:])
  return _binary_cross_entropy(logits, targets).sum(-1).mean()
