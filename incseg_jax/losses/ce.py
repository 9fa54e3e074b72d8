"""Cross-entropy family: the supervised term every method uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from incseg_jax import losses


def masked_mean(per_pixel: jax.Array, valid: jax.Array, reduction: str) -> jax.Array:
  """Reduces a per-pixel loss map with ignored pixels already zeroed.

  Args:
    per_pixel: (B, H, W) loss, 0 at ignored pixels.
    valid: (B, H, W) bool, True where the pixel counts.
    reduction: "all_pixels" divides by B*H*W including ignored pixels (the
      MiB/PLOP/UCD code's convention, docs/reference_code.md §1, which their
      published loss weights were tuned under); "valid" divides by the number
      of valid pixels (the textbook mean); "sum" does not divide.

  Returns:
    A scalar.
  """
  if reduction == "all_pixels":
    return per_pixel.sum() / per_pixel.size
  if reduction == "valid":
    return per_pixel.sum() / jnp.maximum(valid.sum(), 1)
  if reduction == "sum":
    return per_pixel.sum()
  raise ValueError(f"reduction {reduction!r}: expected all_pixels, valid or sum")


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int) -> tuple[jax.Array, jax.Array]:
  """Per-pixel softmax cross-entropy with an ignore label.

  Args:
    logits: (B, H, W, C) float.
    labels: (B, H, W) int, values in [0, C) or ignore_label.
    ignore_label: label value that contributes 0.

  Returns:
    (loss map (B, H, W) with 0 at ignored pixels, valid mask (B, H, W) bool).
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.where(valid, nll, 0.0), valid


@losses.register("ce")
def cross_entropy(inputs: losses.LossInputs, reduction: str = "all_pixels") -> jax.Array:
  """Standard cross-entropy over all current channels at input resolution.

  Args:
    inputs: the step's LossInputs; uses `student["logits"]` and `labels`.
    reduction: see `masked_mean`.

  Returns:
    A scalar loss.
  """
  per_pixel, valid = pixel_cross_entropy(inputs.student["logits"], inputs.labels, inputs.task.ignore_label)
  return masked_mean(per_pixel, valid, reduction)
